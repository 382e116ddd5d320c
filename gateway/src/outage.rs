//! The conditions every call may meet while they last — the audit trail
//! that cannot record (calls refused, or let through unaudited), shared
//! limit counters out of reach, outcomes that could not be recorded —
//! each an `Outage` (`lattice_audit::outage`: logged when it starts,
//! every `REPORT_EVERY` and when it ends, not a line per call).
//!
//! Must never: decide anything about a call.

pub use lattice_audit::outage::Outage;

/// The conditions the gateway reports this way.
pub struct Outages {
    /// The audit pipeline refused a decision, or did not make it durable in
    /// time: calls refused.
    pub audit: Outage,
    /// The same under `audit.on_full = "allow"`: calls let through without
    /// their decision recorded.
    pub unaudited: Outage,
    /// Under `audit.on_full = "allow"`: calls forwarded before their
    /// decision was durable (it is written once the store recovers).
    pub not_durable: Outage,
    /// The shared limit counters (Redis) could not be reached.
    pub limits: Outage,
    /// A call's outcome event could not be recorded.
    pub outcome: Outage,
}

impl Outages {
    /// A call's decision was recorded (and durable, where it waits): every
    /// audit condition that was on is over.
    pub fn audit_recorded(&self) {
        self.audit.log_clear();
        self.unaudited.log_clear();
        self.not_durable.log_clear();
    }
}

impl Default for Outages {
    fn default() -> Self {
        Self {
            audit: Outage::new("the audit trail cannot record decisions"),
            unaudited: Outage::new(
                "the audit trail cannot record decisions (audit.on_full = allow)",
            ),
            not_durable: Outage::new("decisions are not durable in time (audit.on_full = allow)"),
            limits: Outage::new("the shared limit counters cannot be reached"),
            outcome: Outage::new("outcome events cannot be recorded"),
        }
    }
}
