//! Value types built only by `parse`: a handler cannot hold an unchecked one.

pub mod domain_name;
pub mod email_address;
pub mod hello_name;
pub mod local_part;
pub mod text;

pub use domain_name::DomainName;
pub use email_address::EmailAddress;
pub use hello_name::HelloName;
pub use local_part::LocalPart;
