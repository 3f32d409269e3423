//! tandem's load-test kit: the sample "orders" service used as the old and new upstreams.

pub mod orders;
