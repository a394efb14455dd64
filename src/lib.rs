//! redis-handover: a Redis proxy that moves clients from an OLD Redis server to a NEW one live.
//!
//! The path a command takes: [`server`] accepts the client and starts a [`session`]; the session reads
//! requests with [`protocol::request`], classifies them with [`command`], forwards their raw bytes over its
//! [`backend`] link to the [`primary`], and streams replies back, framed by [`protocol::reply`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod clients;
pub mod cluster;
pub mod command;
pub mod config;
pub mod consistency;
pub mod control;
pub mod ctl;
pub mod gate;
pub mod handover;
pub mod links;
pub mod moves;
pub mod net;
pub mod primary;
pub mod protocol;
pub mod readiness;
pub mod scripts;
pub mod server;
pub mod session;
pub mod shared;
pub mod spares;
pub mod telemetry;
