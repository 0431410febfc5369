//! uvm-guest (being built).
