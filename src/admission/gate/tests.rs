//! Step 4 of the flow, admission: the size and layout of a tenant's gate.

use super::*;

/// What a configured tenant and a queued client cost, and that the fields of a
/// fast-path decision share a cache line (`docs/benchmarks.md`).
#[test]
fn tenant_state_is_small_and_its_hot_fields_share_a_line() {
    let gate = std::mem::size_of::<TenantGate>();
    let waiter = std::mem::size_of::<Waiter>();
    eprintln!("TenantGate: {gate} bytes, queue entry: {waiter} bytes");
    assert!(gate <= 512, "{gate}");
    assert_eq!(waiter, 24);
    // queued, then the token bucket and the slot counters, in the first 64 bytes.
    let limit = std::mem::offset_of!(TenantGate, limit);
    let slots = limit + std::mem::offset_of!(Limit, slots);
    assert_eq!(std::mem::offset_of!(TenantGate, queued), 0);
    assert!(slots + 13 <= 64, "slot counters end at {}", slots + 13);
}
