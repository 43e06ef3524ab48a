//! The RFC 4271 section 8 finite-state machine, as a pure function:
//! `(state, event) -> (state, actions)`.
//!
//! The session task (`session.rs`) owns the socket and the timers and turns
//! what happens into [`Event`]s; it carries out the returned [`Action`]s in
//! order. Nothing here knows about time or I/O, so every transition is a
//! unit test. Event numbers in comments are RFC 4271 8.1's.
//!
//! Two simplifications, both allowed by the RFC's optional attributes:
//! DelayOpen and the IdleHoldTimer are not used; instead, whenever the
//! machine falls back to Idle other than by a manual stop, the session task
//! issues an automatic start (Event 3) after a jittered exponential backoff
//! derived from `connect_retry_counter`.

use super::wire::{code, Notification};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Idle,
        State::Connect,
        State::Active,
        State::OpenSent,
        State::OpenConfirm,
        State::Established,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Events 1/3 (active) and 4/5 (passive): which one follows from `passive`.
    Start,
    /// Events 2/8. `notification` is the Cease to send, or `None` to close
    /// the connection silently (graceful restart: the peer keeps the routes).
    Stop { notification: Option<Notification> },
    /// Event 9.
    ConnectRetryTimerExpires,
    /// Event 10.
    HoldTimerExpires,
    /// Event 11.
    KeepaliveTimerExpires,
    /// Events 16/17: our connect completed, or an accepted connection.
    TcpConnected,
    /// Event 18.
    TcpFails,
    /// Event 19: an OPEN that passed every check, with the hold time the
    /// two sides agreed on (0 or at least 3).
    OpenReceived { hold_time: u16 },
    /// Event 21.
    HeaderError(Notification),
    /// Event 22.
    OpenError(Notification),
    /// Event 23: collision resolution (RFC 4271 6.8) chose the other connection.
    CollisionDump,
    /// Event 24.
    NotificationVersionError,
    /// Event 25.
    NotificationReceived,
    /// Event 26.
    KeepaliveReceived,
    /// Event 27 (ROUTE-REFRESH also lands here: it proves the peer alive).
    UpdateReceived,
    /// Event 28.
    UpdateError(Notification),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Initiate a TCP connection to the peer.
    Connect,
    /// Close the TCP connection, if there is one.
    Drop,
    SendOpen,
    SendKeepalive,
    SendNotification(Notification),
    /// (Re)start the ConnectRetryTimer; the task derives its length from
    /// `connect_retry_counter`.
    StartConnectRetryTimer,
    StopConnectRetryTimer,
    /// (Re)start the HoldTimer with this many seconds.
    StartHoldTimer(u16),
    StopHoldTimer,
    StartKeepaliveTimer(u16),
    StopKeepaliveTimer,
    /// Entered Established: send the Adj-RIB-Out.
    SessionUp,
    /// Left Established: forget what the peer was sent.
    SessionDown,
}

/// RFC 4271 10: the HoldTimer's "large value" while waiting for an OPEN.
pub const OPEN_HOLD_TIME: u16 = 240;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fsm {
    pub state: State,
    pub passive: bool,
    pub connect_retry_counter: u32,
    /// Our configured hold time and keepalive interval.
    pub hold_time: u16,
    pub keepalive: u16,
    /// The negotiated hold time, valid from OpenConfirm on.
    pub negotiated_hold: u16,
}

use Action as A;
use State as S;

impl Fsm {
    pub fn new(passive: bool, hold_time: u16, keepalive: u16) -> Self {
        Fsm {
            state: S::Idle,
            passive,
            connect_retry_counter: 0,
            hold_time,
            keepalive,
            negotiated_hold: 0,
        }
    }

    /// The keepalive interval for the negotiated hold time: the configured
    /// one, scaled down where the peer asked for a shorter hold time.
    pub fn keepalive_interval(&self) -> u16 {
        if self.negotiated_hold == 0 {
            return 0;
        }
        if self.negotiated_hold >= self.hold_time {
            self.keepalive
        } else {
            (self.negotiated_hold / 3).max(1).min(self.keepalive.max(1))
        }
    }

    /// Leaves for Idle after an error: the common tail of most error paths.
    fn enter_idle(&mut self, mut acts: Vec<Action>, bump: bool) -> Vec<Action> {
        if self.state == S::Established {
            acts.push(A::SessionDown);
        }
        acts.extend([
            A::Drop,
            A::StopConnectRetryTimer,
            A::StopHoldTimer,
            A::StopKeepaliveTimer,
        ]);
        if bump {
            self.connect_retry_counter += 1;
        }
        self.state = S::Idle;
        acts
    }

    /// An event that the RFC lists under "any other event" for the state:
    /// an FSM error (RFC 6608 subcodes name the state it arrived in).
    fn fsm_error(&mut self) -> Vec<Action> {
        let sub = match self.state {
            S::OpenSent => 1,
            S::OpenConfirm => 2,
            S::Established => 3,
            _ => 0,
        };
        let acts = if matches!(self.state, S::OpenSent | S::OpenConfirm | S::Established) {
            vec![A::SendNotification(Notification::new(code::FSM, sub))]
        } else {
            vec![]
        };
        self.enter_idle(acts, true)
    }

    // One match over state and event, as RFC 4271 8.2.2 tabulates it.
    #[allow(clippy::too_many_lines)]
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        use Event as E;
        match (self.state, ev) {
            // Idle: only a start leaves it; everything else is ignored.
            (S::Idle, E::Start) => {
                self.state = if self.passive { S::Active } else { S::Connect };
                let mut acts = vec![A::StartConnectRetryTimer];
                if !self.passive {
                    acts.push(A::Connect);
                }
                acts
            }
            (S::Idle, _) => vec![],

            // A stop from any other state.
            (_, E::Stop { notification }) => {
                let mut acts = vec![];
                if matches!(self.state, S::OpenSent | S::OpenConfirm | S::Established) {
                    if let Some(n) = notification {
                        acts.push(A::SendNotification(n));
                    }
                }
                let acts = self.enter_idle(acts, false);
                self.connect_retry_counter = 0;
                acts
            }

            // Connect and Active: waiting for a TCP connection.
            (S::Connect, E::ConnectRetryTimerExpires) => {
                vec![A::Drop, A::StartConnectRetryTimer, A::Connect]
            }
            (S::Active, E::ConnectRetryTimerExpires) => {
                if self.passive {
                    vec![A::StartConnectRetryTimer]
                } else {
                    self.state = S::Connect;
                    vec![A::StartConnectRetryTimer, A::Connect]
                }
            }
            (S::Connect | S::Active, E::TcpConnected) => {
                self.state = S::OpenSent;
                vec![
                    A::StopConnectRetryTimer,
                    A::SendOpen,
                    A::StartHoldTimer(OPEN_HOLD_TIME),
                ]
            }
            (S::Connect, E::TcpFails) => {
                self.state = S::Active;
                self.connect_retry_counter += 1;
                vec![A::Drop, A::StartConnectRetryTimer]
            }
            (S::Active, E::TcpFails) => {
                let acts = self.enter_idle(vec![], true);
                // Back to Idle with the timer stopped: the task's automatic
                // start takes it from here after the backoff.
                acts
            }
            (S::Connect | S::Active, _) => self.enter_idle(vec![], true),

            // OpenSent: our OPEN is out, waiting for theirs.
            (S::OpenSent, E::OpenReceived { hold_time }) => {
                self.negotiated_hold = hold_time.min(self.hold_time);
                self.state = S::OpenConfirm;
                let mut acts = vec![A::StopConnectRetryTimer, A::SendKeepalive];
                if self.negotiated_hold > 0 {
                    acts.push(A::StartKeepaliveTimer(self.keepalive_interval()));
                    acts.push(A::StartHoldTimer(self.negotiated_hold));
                } else {
                    acts.push(A::StopHoldTimer);
                }
                acts
            }
            (S::OpenSent, E::TcpFails) => {
                self.state = S::Active;
                vec![A::Drop, A::StopHoldTimer, A::StartConnectRetryTimer]
            }

            // Errors handled the same way from OpenSent on.
            (S::OpenSent | S::OpenConfirm | S::Established, E::HoldTimerExpires) => self
                .enter_idle(
                    vec![A::SendNotification(Notification::new(code::HOLD_TIMER, 0))],
                    true,
                ),
            (
                S::OpenSent | S::OpenConfirm | S::Established,
                E::HeaderError(n) | E::OpenError(n) | E::UpdateError(n),
            ) => self.enter_idle(vec![A::SendNotification(n)], true),
            (S::OpenSent | S::OpenConfirm, E::CollisionDump) => self.enter_idle(
                vec![A::SendNotification(Notification::new(
                    code::CEASE,
                    code::COLLISION_RESOLUTION,
                ))],
                true,
            ),
            (S::OpenSent | S::OpenConfirm | S::Established, E::NotificationVersionError) => {
                self.enter_idle(vec![], false)
            }
            (S::OpenSent | S::OpenConfirm | S::Established, E::NotificationReceived) => {
                self.enter_idle(vec![], true)
            }
            (S::OpenConfirm | S::Established, E::TcpFails) => self.enter_idle(vec![], true),

            // OpenConfirm: waiting for the KEEPALIVE that confirms their OPEN.
            (S::OpenConfirm | S::Established, E::KeepaliveTimerExpires) => {
                vec![
                    A::SendKeepalive,
                    A::StartKeepaliveTimer(self.keepalive_interval()),
                ]
            }
            (S::OpenConfirm, E::KeepaliveReceived) => {
                self.state = S::Established;
                self.connect_retry_counter = 0;
                let mut acts = vec![];
                if self.negotiated_hold > 0 {
                    acts.push(A::StartHoldTimer(self.negotiated_hold));
                }
                acts.push(A::SessionUp);
                acts
            }

            // Established.
            (S::Established, E::KeepaliveReceived | E::UpdateReceived) => {
                if self.negotiated_hold > 0 {
                    vec![A::StartHoldTimer(self.negotiated_hold)]
                } else {
                    vec![]
                }
            }

            // Everything else is an FSM error (RFC 4271 8.2.2, "any other event").
            (S::OpenSent | S::OpenConfirm | S::Established, _) => self.fsm_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fsm(state: State) -> Fsm {
        let mut f = Fsm::new(false, 90, 30);
        f.state = state;
        f
    }

    fn go(state: State, ev: Event) -> (State, Vec<Action>, Fsm) {
        let mut f = fsm(state);
        let a = f.handle(ev);
        (f.state, a, f)
    }

    const DOWN: [Action; 4] = [
        A::Drop,
        A::StopConnectRetryTimer,
        A::StopHoldTimer,
        A::StopKeepaliveTimer,
    ];

    fn notif(c: u8, s: u8) -> Action {
        A::SendNotification(Notification::new(c, s))
    }

    #[test]
    fn idle_start_active_and_passive() {
        let (s, a, _) = go(S::Idle, Event::Start);
        assert_eq!(s, S::Connect);
        assert_eq!(a, vec![A::StartConnectRetryTimer, A::Connect]);
        let mut f = Fsm::new(true, 90, 30);
        assert_eq!(f.handle(Event::Start), vec![A::StartConnectRetryTimer]);
        assert_eq!(f.state, S::Active);
    }

    #[test]
    fn idle_ignores_everything_but_start() {
        for ev in [
            Event::TcpConnected,
            Event::HoldTimerExpires,
            Event::KeepaliveReceived,
            Event::Stop { notification: None },
        ] {
            let (s, a, _) = go(S::Idle, ev);
            assert_eq!((s, a), (S::Idle, vec![]));
        }
    }

    #[test]
    fn connect_retry_timer_in_connect_retries() {
        let (s, a, _) = go(S::Connect, Event::ConnectRetryTimerExpires);
        assert_eq!(s, S::Connect);
        assert_eq!(a, vec![A::Drop, A::StartConnectRetryTimer, A::Connect]);
    }

    #[test]
    fn connect_retry_timer_in_active_connects_unless_passive() {
        let (s, a, _) = go(S::Active, Event::ConnectRetryTimerExpires);
        assert_eq!(
            (s, a),
            (S::Connect, vec![A::StartConnectRetryTimer, A::Connect])
        );
        let mut f = Fsm::new(true, 90, 30);
        f.state = S::Active;
        assert_eq!(
            f.handle(Event::ConnectRetryTimerExpires),
            vec![A::StartConnectRetryTimer]
        );
        assert_eq!(f.state, S::Active);
    }

    #[test]
    fn tcp_connected_sends_open_with_large_hold_timer() {
        for st in [S::Connect, S::Active] {
            let (s, a, _) = go(st, Event::TcpConnected);
            assert_eq!(s, S::OpenSent);
            assert_eq!(
                a,
                vec![
                    A::StopConnectRetryTimer,
                    A::SendOpen,
                    A::StartHoldTimer(240)
                ]
            );
        }
    }

    #[test]
    fn tcp_fails_in_connect_goes_active_and_counts() {
        let (s, a, f) = go(S::Connect, Event::TcpFails);
        assert_eq!((s, f.connect_retry_counter), (S::Active, 1));
        assert_eq!(a, vec![A::Drop, A::StartConnectRetryTimer]);
    }

    #[test]
    fn tcp_fails_in_active_goes_idle() {
        let (s, a, f) = go(S::Active, Event::TcpFails);
        assert_eq!((s, f.connect_retry_counter), (S::Idle, 1));
        assert_eq!(a, DOWN.to_vec());
    }

    #[test]
    fn unexpected_events_before_opensent_go_idle_without_notification() {
        for st in [S::Connect, S::Active] {
            let (s, a, f) = go(st, Event::KeepaliveReceived);
            assert_eq!((s, a, f.connect_retry_counter), (S::Idle, DOWN.to_vec(), 1));
        }
    }

    #[test]
    fn open_received_negotiates_hold_and_keepalive() {
        let (s, a, f) = go(S::OpenSent, Event::OpenReceived { hold_time: 9 });
        assert_eq!(s, S::OpenConfirm);
        assert_eq!(f.negotiated_hold, 9);
        assert_eq!(
            a,
            vec![
                A::StopConnectRetryTimer,
                A::SendKeepalive,
                A::StartKeepaliveTimer(3),
                A::StartHoldTimer(9)
            ]
        );
        let (_, a, f) = go(S::OpenSent, Event::OpenReceived { hold_time: 180 });
        assert_eq!(f.negotiated_hold, 90);
        assert!(a.contains(&A::StartKeepaliveTimer(30)));
        let (_, a, f) = go(S::OpenSent, Event::OpenReceived { hold_time: 0 });
        assert_eq!(f.negotiated_hold, 0);
        assert_eq!(
            a,
            vec![A::StopConnectRetryTimer, A::SendKeepalive, A::StopHoldTimer]
        );
    }

    #[test]
    fn tcp_fails_in_opensent_goes_active() {
        let (s, a, _) = go(S::OpenSent, Event::TcpFails);
        assert_eq!(s, S::Active);
        assert_eq!(
            a,
            vec![A::Drop, A::StopHoldTimer, A::StartConnectRetryTimer]
        );
    }

    #[test]
    fn hold_timer_expiry_sends_code_4() {
        for st in [S::OpenSent, S::OpenConfirm, S::Established] {
            let (s, a, f) = go(st, Event::HoldTimerExpires);
            assert_eq!(s, S::Idle);
            assert_eq!(a[0], notif(4, 0));
            assert_eq!(f.connect_retry_counter, 1);
            assert_eq!(st == S::Established, a.contains(&A::SessionDown));
        }
    }

    #[test]
    fn message_errors_send_their_notification() {
        for st in [S::OpenSent, S::OpenConfirm, S::Established] {
            for ev in [
                Event::HeaderError(Notification::new(1, 2)),
                Event::OpenError(Notification::new(2, 2)),
                Event::UpdateError(Notification::new(3, 1)),
            ] {
                let n = match &ev {
                    Event::HeaderError(n) | Event::OpenError(n) | Event::UpdateError(n) => {
                        n.clone()
                    }
                    _ => unreachable!(),
                };
                let (s, a, _) = go(st, ev);
                assert_eq!(s, S::Idle);
                assert_eq!(a[0], A::SendNotification(n));
            }
        }
    }

    #[test]
    fn collision_dump_sends_cease_7() {
        for st in [S::OpenSent, S::OpenConfirm] {
            let (s, a, _) = go(st, Event::CollisionDump);
            assert_eq!(s, S::Idle);
            assert_eq!(a[0], notif(6, 7));
        }
    }

    #[test]
    fn notifications_received_go_idle_silently() {
        for st in [S::OpenSent, S::OpenConfirm, S::Established] {
            let (s, a, f) = go(st, Event::NotificationReceived);
            assert_eq!(s, S::Idle);
            assert!(!a.iter().any(|x| matches!(x, A::SendNotification(_))));
            assert_eq!(f.connect_retry_counter, 1);
            let (_, _, f) = go(st, Event::NotificationVersionError);
            assert_eq!(f.connect_retry_counter, 0);
        }
    }

    #[test]
    fn keepalive_in_openconfirm_establishes() {
        let mut f = fsm(S::OpenSent);
        f.handle(Event::OpenReceived { hold_time: 30 });
        f.connect_retry_counter = 3;
        let a = f.handle(Event::KeepaliveReceived);
        assert_eq!(f.state, S::Established);
        assert_eq!(a, vec![A::StartHoldTimer(30), A::SessionUp]);
        assert_eq!(f.connect_retry_counter, 0);
    }

    #[test]
    fn keepalive_timer_sends_keepalive() {
        for st in [S::OpenConfirm, S::Established] {
            let mut f = fsm(st);
            f.negotiated_hold = 90;
            let a = f.handle(Event::KeepaliveTimerExpires);
            assert_eq!(a, vec![A::SendKeepalive, A::StartKeepaliveTimer(30)]);
            assert_eq!(f.state, st);
        }
    }

    #[test]
    fn established_restarts_hold_timer_on_traffic() {
        let mut f = fsm(S::Established);
        f.negotiated_hold = 9;
        assert_eq!(
            f.handle(Event::KeepaliveReceived),
            vec![A::StartHoldTimer(9)]
        );
        assert_eq!(f.handle(Event::UpdateReceived), vec![A::StartHoldTimer(9)]);
        f.negotiated_hold = 0;
        assert_eq!(f.handle(Event::UpdateReceived), vec![]);
        assert_eq!(f.state, S::Established);
    }

    #[test]
    fn unexpected_messages_are_fsm_errors_with_rfc6608_subcodes() {
        let (s, a, _) = go(S::OpenSent, Event::KeepaliveReceived);
        assert_eq!((s, a[0].clone()), (S::Idle, notif(5, 1)));
        let (_, a, _) = go(S::OpenConfirm, Event::UpdateReceived);
        assert_eq!(a[0], notif(5, 2));
        let (_, a, _) = go(S::Established, Event::OpenReceived { hold_time: 90 });
        assert_eq!(a[0], notif(5, 3));
        assert!(a.contains(&A::SessionDown));
        let (_, a, _) = go(S::Established, Event::TcpConnected);
        assert_eq!(a[0], notif(5, 3));
    }

    #[test]
    fn stop_sends_given_notification_or_closes_silently() {
        let cease = Notification::shutdown(2, "bye");
        let (s, a, f) = go(
            S::Established,
            Event::Stop {
                notification: Some(cease.clone()),
            },
        );
        assert_eq!(s, S::Idle);
        assert_eq!(a[0], A::SendNotification(cease.clone()));
        assert_eq!(a[1], A::SessionDown);
        assert_eq!(f.connect_retry_counter, 0);
        let (_, a, _) = go(S::Established, Event::Stop { notification: None });
        assert!(!a.iter().any(|x| matches!(x, A::SendNotification(_))));
        assert!(a.contains(&A::Drop));
        // No NOTIFICATION before an OPEN was sent.
        let (_, a, _) = go(
            S::Connect,
            Event::Stop {
                notification: Some(cease),
            },
        );
        assert_eq!(a, DOWN.to_vec());
    }

    #[test]
    fn tcp_fails_after_open_goes_idle() {
        for st in [S::OpenConfirm, S::Established] {
            let (s, a, _) = go(st, Event::TcpFails);
            assert_eq!(s, S::Idle);
            assert!(a.contains(&A::Drop));
        }
    }
}
