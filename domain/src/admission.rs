//! The Admission aggregate: flow control's record of the runs it let execute under a
//! limit of N runs per period for one function and key (a rate limit; idempotency is
//! the limit of one run per 24 hours). Each grant is an event, so the decision holds
//! whichever process makes it (two processes deciding at once conflict on the stream
//! and the loser decides again) and an investigator can read why a run ran.
//!
//! A rate limit's streams are cut into windows of one period, so no stream grows past
//! `limit` grants; the decision counts the grants of the last period, read from the
//! current window's stream and (passed in the command) the previous one's.
//!
//! Stream: `admission-<tenant>:<environment>:<function>:<rule>:<key digest>[:<window>]`,
//! stream type `admission`.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decider::{Decider, DomainEvent};
use crate::environment::Environment;

pub const STREAM_TYPE: &str = "admission";

/// `rule` names the setting (`rate_limit`, `idempotency`); `key_digest` a digest of the
/// evaluated key (any text; the caller hashes it to keep stream ids short).
pub fn stream_id(
    tenant: &str,
    environment: Environment,
    function_id: &str,
    rule: &str,
    key_digest: &str,
    window: Option<i64>,
) -> String {
    let base = format!("admission-{tenant}:{environment}:{function_id}:{rule}:{key_digest}");
    match window {
        Some(window) => format!("{base}:{window}"),
        None => base,
    }
}

/// The window a moment falls in, for limits cut into windows of `period`.
pub fn window_of(at: DateTime<Utc>, period: Duration) -> i64 {
    let period = period.num_milliseconds().max(1);
    at.timestamp_millis().div_euclid(period)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AdmissionEvent {
    #[serde(rename = "admission.granted")]
    Granted {
        run_id: Uuid,
        /// The key as evaluated, for the investigator.
        key: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for AdmissionEvent {
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    fn event_type(&self) -> &'static str {
        match self {
            AdmissionEvent::Granted { .. } => "admission.granted",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionState {
    pub granted: Vec<(Uuid, DateTime<Utc>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admit {
    pub run_id: Uuid,
    pub key: String,
    pub limit: u32,
    pub period: Duration,
    /// Grants recorded elsewhere that count too (the previous window's).
    pub earlier: Vec<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("{limit} runs in {period}s already ran for this key")]
    LimitReached { limit: u32, period: i64 },
}

#[derive(Debug)]
pub struct Admission;

impl Decider for Admission {
    type State = AdmissionState;
    type Command = Admit;
    type Event = AdmissionEvent;
    type Error = AdmissionError;

    fn initial() -> AdmissionState {
        AdmissionState::default()
    }

    fn evolve(mut state: AdmissionState, event: &AdmissionEvent) -> AdmissionState {
        match event {
            AdmissionEvent::Granted { run_id, at, .. } => state.granted.push((*run_id, *at)),
        }
        state
    }

    /// Grants the run a place if fewer than `limit` were granted in the `period` before
    /// `at`. Asking again for a run already granted changes nothing (a retried
    /// decision).
    fn decide(state: &AdmissionState, admit: Admit) -> Result<Vec<AdmissionEvent>, AdmissionError> {
        if state.granted.iter().any(|(run, _)| *run == admit.run_id) {
            return Ok(vec![]);
        }
        let since = admit.at - admit.period;
        let recent = state
            .granted
            .iter()
            .map(|(_, at)| at)
            .chain(admit.earlier.iter())
            .filter(|at| **at > since)
            .count();
        if recent >= admit.limit as usize {
            return Err(AdmissionError::LimitReached {
                limit: admit.limit,
                period: admit.period.num_seconds(),
            });
        }
        Ok(vec![AdmissionEvent::Granted {
            run_id: admit.run_id,
            key: admit.key,
            at: admit.at,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decider::spec::DeciderSpec;
    use chrono::TimeZone;

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap() + Duration::seconds(seconds)
    }

    fn run(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn admit(n: u128, at: i64) -> Admit {
        Admit {
            run_id: run(n),
            key: "customer-42".into(),
            limit: 2,
            period: Duration::seconds(60),
            earlier: vec![],
            at: t(at),
        }
    }

    fn granted(n: u128, at: i64) -> AdmissionEvent {
        AdmissionEvent::Granted {
            run_id: run(n),
            key: "customer-42".into(),
            at: t(at),
        }
    }

    #[test]
    fn grants_up_to_the_limit_within_the_period() {
        DeciderSpec::<Admission>::given([])
            .when(admit(1, 0))
            .then([granted(1, 0)]);
        DeciderSpec::<Admission>::given([granted(1, 0)])
            .when(admit(2, 10))
            .then([granted(2, 10)]);
        DeciderSpec::<Admission>::given([granted(1, 0), granted(2, 10)])
            .when(admit(3, 20))
            .then_error(|e| {
                *e == AdmissionError::LimitReached {
                    limit: 2,
                    period: 60,
                }
            });
    }

    #[test]
    fn a_place_frees_once_the_period_has_passed() {
        DeciderSpec::<Admission>::given([granted(1, 0), granted(2, 10)])
            .when(admit(3, 61))
            .then([granted(3, 61)]);
    }

    #[test]
    fn grants_of_the_previous_window_count_too() {
        let mut command = admit(3, 30);
        command.earlier = vec![t(-20), t(-10)];
        DeciderSpec::<Admission>::given([])
            .when(command)
            .then_error(|e| matches!(e, AdmissionError::LimitReached { .. }));
        let mut command = admit(3, 30);
        command.earlier = vec![t(-40), t(-10)];
        DeciderSpec::<Admission>::given([])
            .when(command)
            .then([granted(3, 30)]);
    }

    #[test]
    fn asking_again_for_a_granted_run_changes_nothing() {
        DeciderSpec::<Admission>::given([granted(1, 0), granted(2, 10)])
            .when(admit(1, 20))
            .then_nothing_happens();
    }

    #[test]
    fn windows_are_whole_periods() {
        let minute = Duration::seconds(60);
        assert_eq!(window_of(t(0), minute), window_of(t(59), minute));
        assert_eq!(window_of(t(0), minute) + 1, window_of(t(60), minute));
    }
}

// ---------------------------------------------------------------- singleton

/// The Singleton aggregate: at most one active run of a function per key. It records
/// which run holds the key; a holder that has finished gives way to the next claim
/// (the engine checks the holder's run and says so in the claim), so nothing needs to
/// be released and a crash can leave nothing locked.
///
/// Stream: `singleton-<tenant>:<environment>:<function>:<key digest>`, stream type
/// `singleton`.
pub mod singleton {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    use crate::decider::{Decider, DomainEvent};
    use crate::environment::Environment;

    pub const STREAM_TYPE: &str = "singleton";

    pub fn stream_id(
        tenant: &str,
        environment: Environment,
        function_id: &str,
        key_digest: &str,
    ) -> String {
        format!("singleton-{tenant}:{environment}:{function_id}:{key_digest}")
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    pub enum SingletonEvent {
        #[serde(rename = "singleton.claimed")]
        Claimed {
            run_id: Uuid,
            key: String,
            /// The active run this claim cancels (`mode: cancel`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            replaces: Option<Uuid>,
            at: DateTime<Utc>,
        },
    }

    impl DomainEvent for SingletonEvent {
        const STREAM_TYPE: &'static str = STREAM_TYPE;

        fn event_type(&self) -> &'static str {
            "singleton.claimed"
        }
    }

    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct SingletonState {
        pub holder: Option<Uuid>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Claim {
        pub run_id: Uuid,
        pub key: String,
        /// A holder the engine found finished: it gives way.
        pub finished_holder: Option<Uuid>,
        /// `mode: cancel`: an active holder is replaced (and cancelled) instead.
        pub replace_active: bool,
        pub at: DateTime<Utc>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum SingletonError {
        #[error("run {0} is active for this key")]
        Busy(Uuid),
    }

    #[derive(Debug)]
    pub struct Singleton;

    impl Decider for Singleton {
        type State = SingletonState;
        type Command = Claim;
        type Event = SingletonEvent;
        type Error = SingletonError;

        fn initial() -> SingletonState {
            SingletonState::default()
        }

        fn evolve(_: SingletonState, event: &SingletonEvent) -> SingletonState {
            match event {
                SingletonEvent::Claimed { run_id, .. } => SingletonState {
                    holder: Some(*run_id),
                },
            }
        }

        fn decide(
            state: &SingletonState,
            claim: Claim,
        ) -> Result<Vec<SingletonEvent>, SingletonError> {
            let claimed = |replaces| {
                Ok(vec![SingletonEvent::Claimed {
                    run_id: claim.run_id,
                    key: claim.key.clone(),
                    replaces,
                    at: claim.at,
                }])
            };
            match state.holder {
                Some(holder) if holder == claim.run_id => Ok(vec![]),
                None => claimed(None),
                Some(holder) if Some(holder) == claim.finished_holder => claimed(None),
                Some(holder) if claim.replace_active => claimed(Some(holder)),
                Some(holder) => Err(SingletonError::Busy(holder)),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::decider::spec::DeciderSpec;
        use chrono::TimeZone;

        fn at() -> DateTime<Utc> {
            Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
        }

        fn claim(n: u128, finished_holder: Option<u128>, replace_active: bool) -> Claim {
            Claim {
                run_id: Uuid::from_u128(n),
                key: "ann".into(),
                finished_holder: finished_holder.map(Uuid::from_u128),
                replace_active,
                at: at(),
            }
        }

        fn claimed(n: u128, replaces: Option<u128>) -> SingletonEvent {
            SingletonEvent::Claimed {
                run_id: Uuid::from_u128(n),
                key: "ann".into(),
                replaces: replaces.map(Uuid::from_u128),
                at: at(),
            }
        }

        #[test]
        fn the_first_claim_holds_the_key_and_others_are_refused() {
            DeciderSpec::<Singleton>::given([])
                .when(claim(1, None, false))
                .then([claimed(1, None)]);
            DeciderSpec::<Singleton>::given([claimed(1, None)])
                .when(claim(2, None, false))
                .then_error(|e| *e == SingletonError::Busy(Uuid::from_u128(1)));
        }

        #[test]
        fn a_finished_holder_gives_way_but_only_that_one() {
            DeciderSpec::<Singleton>::given([claimed(1, None)])
                .when(claim(2, Some(1), false))
                .then([claimed(2, None)]);
            // The holder changed since the engine looked: refused, and looked at again.
            DeciderSpec::<Singleton>::given([claimed(1, None), claimed(3, None)])
                .when(claim(2, Some(1), false))
                .then_error(|e| *e == SingletonError::Busy(Uuid::from_u128(3)));
        }

        #[test]
        fn cancel_mode_replaces_the_active_run_and_a_repeat_changes_nothing() {
            DeciderSpec::<Singleton>::given([claimed(1, None)])
                .when(claim(2, None, true))
                .then([claimed(2, Some(1))]);
            DeciderSpec::<Singleton>::given([claimed(1, None)])
                .when(claim(1, None, false))
                .then_nothing_happens();
        }
    }
}
