//! hubgate: a policy-enforcing reverse proxy for the AWS Security Hub API.
//!
//! One module per stage of a request's path (see DESIGN.md): `server` accepts, `routes` names
//! the operation, `identity` establishes the caller, `validate` parses and checks the body,
//! `enrich` reads the findings' current state, `policy` evaluates, `decide` judges a body (the
//! passes in order), `upstream` forwards, `envelope` shapes every rejection and `audit` records
//! each decision. `proxy` runs them in order. `quota` and `coordination` pace upstream calls
//! (and share pacing and cache between replicas).
//!
//! Imports point one way (CONTRIBUTING.md; `tests/tools/module_cycles.py` fails CI on a cycle):
//! finding / files / metrics / framing / payload / validate / request / routes / config at the bottom, then the
//! stages, then envelope / proxy, then server / cli.
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod cli;
pub mod config;
pub mod coordination;
pub mod decide;
pub mod enrich;
pub mod envelope;
pub mod files;
pub mod finding;
pub mod framing;
pub mod identity;
pub mod metrics;
pub mod payload;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod quoted;
pub mod reads;
pub mod request;
pub mod routes;
pub mod server;
pub mod upstream;
pub mod validate;
