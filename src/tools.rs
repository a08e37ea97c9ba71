//! Entry: the tools that reproduce the field problem (edge simulator, spike, demo).
//!
//! The tools that reproduce the field problem (DESIGN.md "Command line"): an edge
//! simulator ([`edge_sim`]), a softphone spike generator ([`spike`]), and the demo that
//! runs a spike against the simulator directly and through sluice ([`demo`]). The
//! first two read SIP text with [`sip_lines`].

pub mod demo;
pub mod edge_sim;
pub mod sip_lines;
pub mod spike;
