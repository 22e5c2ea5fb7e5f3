//! deploy/systemd as systemd itself reads it: the service unit verifies without a
//! warning, and the sysusers file makes the users and groups the other files name.

use std::path::Path;
use std::process::Command;

use super::host::deploy;
use super::installed;

#[test]
fn the_service_unit_verifies() {
    if !installed("systemd-analyze") {
        return;
    }
    // The shipped unit, run from where this build put the binary.
    let dir = tempfile::tempdir().unwrap();
    let unit = deploy("systemd/mailroom.service")
        .replace("/usr/local/bin/mailroom", env!("CARGO_BIN_EXE_mailroom"));
    assert!(unit.contains(env!("CARGO_BIN_EXE_mailroom")));
    let path = dir.path().join("mailroom.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
}

#[test]
fn sysusers_and_tmpfiles_make_the_users_and_folders_the_mail_host_needs() {
    use std::os::unix::fs::MetadataExt;
    if !installed("systemd-sysusers") || !installed("systemd-tmpfiles") {
        return;
    }
    // A machine of its own: an empty root with an /etc.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let file = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/systemd")
            .join(name)
    };
    for (program, conf) in [
        ("systemd-sysusers", file("mailroom.sysusers.conf")),
        ("systemd-tmpfiles", file("mailroom.tmpfiles.conf")),
    ] {
        let mut command = Command::new(program);
        command.arg(format!("--root={}", root.path().display()));
        if program == "systemd-tmpfiles" {
            command.arg("--create");
        }
        let output = command.arg(conf).output().unwrap();
        assert!(
            output.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let group_file = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let group = |name: &str| -> (u32, Vec<String>) {
        let line = group_file
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no group {name}: {group_file}"));
        let fields: Vec<&str> = line.split(':').collect();
        let members = fields[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect();
        (fields[2].parse().unwrap(), members)
    };
    let (_, readers) = group("mailroom-db");
    assert!(readers.contains(&"postfix".to_string()) && readers.contains(&"mailroom".to_string()));
    let folder = |path: &str| std::fs::metadata(root.path().join(path)).unwrap();
    // MAILROOM_VMAIL_ROOT, MAILROOM_VMAIL_UID and MAILROOM_VMAIL_GID's defaults.
    let vmail = folder("var/vmail");
    assert_eq!(
        (vmail.mode() & 0o7777, vmail.uid(), vmail.gid()),
        (0o700, 5000, 5000)
    );
    let settings = folder("etc/mailroom");
    assert_eq!(
        (settings.mode() & 0o7777, settings.gid()),
        (0o750, group("mailroom").0)
    );
    assert_eq!(folder("etc/mailroom/tls").mode() & 0o7777, 0o700);
    let tables = folder("etc/postfix/mailroom");
    assert_eq!(
        (tables.mode() & 0o7777, tables.gid()),
        (0o750, group("postfix").0)
    );
}
