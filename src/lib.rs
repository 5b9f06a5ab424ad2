//! bitbucket-sso-proxy: an OpenID Connect single sign-on gateway in front of Atlassian Bitbucket.
//!
//! `main.rs` parses the command line and calls into this library; everything else lives here.

pub mod access;
pub mod admin;
pub mod bitbucket;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod identity;
pub mod keys;
pub mod mapping;
pub mod oidc;
pub mod online;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod server;
pub mod session;
pub mod standin;
pub mod telemetry;
pub mod web;
