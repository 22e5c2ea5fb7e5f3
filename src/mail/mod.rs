//! The delivery engine: the outbox, templates, composing and DKIM signing, transports and
//! the worker. It knows the tenants only through the `port::Directory` it is given.

pub mod compose;
pub mod destination;
pub mod dkim;
pub mod outbox;
pub mod pool;
pub mod port;
pub mod templates;
pub mod transport;
pub mod worker;
