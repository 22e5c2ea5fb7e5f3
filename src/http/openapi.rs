//! The OpenAPI 3.1 document, generated from the handlers' annotations; the error answers
//! every operation can give are added here once instead of on each handler.

use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mailroom",
        description = "A self-hosted email control plane: managed domains, mailboxes, sender \
                       addresses, SMTP relays, a sending API with a suppression list, an outbox, team \
                       invitations, and signed webhooks of the account's event log."
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The credential header styles, each enough on its own.
const SCHEMES: [&str; 4] = ["bearer", "authorization", "x-api-key", "x-access-token"];

pub fn base() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    for (name, header) in [
        ("authorization", "Authorization"),
        ("x-api-key", "x-api-key"),
        ("x-access-token", "X-Access-Token"),
    ] {
        components.add_security_scheme(
            name,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(header))),
        );
    }
    document.security = Some(
        SCHEMES
            .iter()
            .map(|scheme| SecurityRequirement::new(*scheme, Vec::<String>::new()))
            .collect(),
    );
    document
}

/// Adds to every operation the error answers it can give: 500 always; 400, 401, 403
/// and 404 (and the `x-entity-id` header) when it needs credentials; 400, 413, 415 and
/// 422 when it takes a body; 404 when its path names something.
pub fn complete(mut document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            add_error_responses(operation);
        }
    }
    document
}

fn add_error_responses(operation: &mut Operation) {
    let public = operation
        .security
        .as_ref()
        .is_some_and(|all| all.iter().all(|r| *r == SecurityRequirement::default()));
    let has_path_params = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Path);
    let mut statuses = vec![("500", "Something went wrong on the server")];
    if !public {
        statuses.extend([
            ("400", "A header is malformed"),
            ("401", "No valid credential"),
            ("403", "The credential's role is too low"),
            ("404", "Not found, or not the caller's"),
        ]);
        operation.parameters.get_or_insert_with(Vec::new).push(
            ParameterBuilder::new()
                .name("x-entity-id")
                .parameter_in(ParameterIn::Header)
                .description(Some(
                    "The entity to act in; default: the credential's entity, else the \
                     account's first entity",
                ))
                .schema(Some(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::Type::String),
                ))
                .build(),
        );
    }
    if has_path_params {
        statuses.push(("404", "Not found, or not the caller's"));
    }
    if operation.request_body.is_some() {
        statuses.extend([
            ("400", "The body is not valid JSON"),
            ("413", "The body is too large"),
            ("415", "The body is not JSON"),
            ("422", "A field is missing or invalid"),
        ]);
    }
    for (status, description) in statuses {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| {
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .into()
            });
    }
}
