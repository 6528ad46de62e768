//! Druid's time model, shared by the state machine, the ingestion code and the tools: instants
//! and half-open intervals as Druid prints and parses them ([`interval`]) and the granularities
//! that bucket time into segments and truncate row timestamps ([`granularity`]).

pub mod granularity;
pub mod interval;

pub use granularity::Granularity;
pub use interval::Interval;
