//! Wire formats: the helpers this crate needs beyond smoltcp's own parse/emit types.

pub(crate) mod dns;
pub(crate) mod emit;
