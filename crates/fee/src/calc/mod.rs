//! Outpatient (入院外) fee calculation driven by the masters and the 電子点数表.

pub mod calendar;
mod engine;
pub mod model;
pub mod rules;

pub use engine::{calculate, calculate_month, copay, default_burden, drug_points, high_cost_limit};
pub use model::*;
