//! uvm (being built).
