//! uvm-image (being built).
