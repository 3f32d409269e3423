//! tandem's load-test kit: the sample "orders" service used as the old and new upstreams (with
//! fault switches), and the load generator that measures what tandem costs.

pub mod faults;
pub mod orders;
pub mod propagation;
pub mod run;
