//! Webhooks and the event log: the API, signed delivery to real receivers, and each event
//! fired by the action that causes it.

mod api;
mod delivery;
mod events;
