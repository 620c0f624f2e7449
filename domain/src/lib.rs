//! The pure core of FlowForge.
//!
//! Everything here is deterministic and free of IO: aggregates are written in the
//! Decider shape (`initial`, `evolve`, `decide`), events are plain data that know
//! their stable `event_type` and `schema_version`, and the clock, ids and randomness
//! arrive inside commands. Storage, transport and HTTP live in outer crates that
//! depend on this one, never the other way round.

pub mod access;
pub mod admission;
pub mod agent;
pub mod api_key;
pub mod app;
pub mod approval;
pub mod comment;
pub mod decider;
pub mod duration;
pub mod environment;
pub mod event;
pub mod flow_control;
pub mod metadata;
pub mod notification;
pub mod ownership;
pub mod run;
pub mod signing_key;
pub mod skill;
pub mod task;
pub mod tenant;
pub mod trigger;
pub mod user;
pub mod webhook;

pub use decider::{Decider, DomainEvent, EventDecodeError};
pub use environment::Environment;
pub use metadata::{Actor, ActorKind, EventMetadata, TenantId};
