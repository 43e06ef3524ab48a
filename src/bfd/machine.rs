//! One BFD session as a pure state machine (RFC 5880 sections 6.2, 6.8):
//! a received packet or an expired detection time in, the new state and
//! what to do out. Asynchronous mode only; the timers are values the I/O
//! task arms, never clocks read here.

use std::time::Duration;

use super::packet::{diag, Packet, State};

/// While a session is not Up it transmits no faster than once a second
/// (section 6.8.3).
pub const SLOW_TX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Desired minimum TX and required minimum RX interval.
    pub interval: Duration,
    pub detect_mult: u8,
}

/// What the I/O task does after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer a Poll at once with this packet (F set), outside the
    /// periodic schedule (section 6.8.7).
    SendFinal(Packet),
    /// Send the periodic packet now instead of waiting (a state change).
    SendNow,
    /// The interval between periodic packets shrank (the remote lowered
    /// its Required Min RX, as FRR does on reaching Up from its 1 s while
    /// Down): the next packet is due that much sooner after the last one,
    /// or the remote's new, shorter detection time can expire before it.
    Reschedule,
    StateChanged {
        from: State,
        to: State,
        diag: u8,
    },
}

/// `bfd.*` of section 6.8.1, as one session keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub state: State,
    pub remote_state: State,
    pub local_disc: u32,
    pub remote_disc: u32,
    pub diag: u8,
    cfg: Config,
    /// What this side advertises now, in microseconds.
    desired_tx: u32,
    required_rx: u32,
    /// The values before a Poll sequence in progress: until the Final
    /// arrives, the slower of old and new governs (section 6.8.3).
    polling: Option<(u32, u32)>,
    remote_min_rx: u32,
    remote_desired_tx: u32,
    remote_mult: u8,
    /// A packet has been received since the session was last Down by
    /// expiry: the detection time is armed.
    heard: bool,
}

fn us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Session {
    pub fn new(cfg: Config, local_disc: u32) -> Session {
        Session {
            state: State::Down,
            remote_state: State::Down,
            local_disc,
            remote_disc: 0,
            diag: diag::NONE,
            cfg,
            desired_tx: us(cfg.interval.max(SLOW_TX)),
            required_rx: us(cfg.interval),
            polling: None,
            remote_min_rx: 1,
            remote_desired_tx: 0,
            remote_mult: 0,
            heard: false,
        }
    }

    /// The periodic packet, with P set while a Poll sequence runs.
    pub fn packet(&self) -> Packet {
        Packet {
            diag: self.diag,
            state: self.state,
            poll: self.polling.is_some(),
            fin: false,
            cpi: false,
            demand: false,
            detect_mult: self.cfg.detect_mult,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: self.desired_tx,
            required_min_rx: self.required_rx,
            required_min_echo_rx: 0,
        }
    }

    /// Between periodic packets, before jitter: the slower of what this
    /// side wants to send and what the remote wants to receive.
    pub fn tx_interval(&self) -> Duration {
        let mine = match self.polling {
            // An increase waits for the Final; a decrease applies at once.
            Some((old, _)) => old.min(self.desired_tx),
            None => self.desired_tx,
        };
        Duration::from_micros(u64::from(mine.max(self.remote_min_rx)))
    }

    /// Section 6.8.7: 75 to 100 percent of the interval (75 to 90 with a
    /// detect multiplier of 1); `r` is uniform in [0, 1).
    pub fn jittered(&self, r: f64) -> Duration {
        let top = if self.cfg.detect_mult == 1 { 0.90 } else { 1.0 };
        self.tx_interval()
            .mul_f64(0.75 + r.clamp(0.0, 1.0) * (top - 0.75))
    }

    /// How long without a packet until the session is declared down:
    /// the remote's multiplier times the agreed interval. `None` until a
    /// packet has been heard.
    pub fn detection_time(&self) -> Option<Duration> {
        if !self.heard {
            return None;
        }
        let rx = match self.polling {
            // A reduction waits for the Final; an increase applies at once.
            Some((_, old)) => old.max(self.required_rx),
            None => self.required_rx,
        };
        let per = u64::from(rx.max(self.remote_desired_tx));
        Some(Duration::from_micros(per * u64::from(self.remote_mult)))
    }

    /// The negotiated intervals, for status: (TX, RX) in effect.
    pub fn intervals(&self) -> (Duration, Duration) {
        let rx = u64::from(self.required_rx.max(self.remote_desired_tx));
        (self.tx_interval(), Duration::from_micros(rx))
    }

    fn set_state(&mut self, to: State, why: u8, out: &mut Vec<Action>) {
        if to == self.state {
            return;
        }
        let from = self.state;
        self.state = to;
        self.diag = why;
        // Not Up: back to the slow rate, without a Poll (section 6.8.3);
        // Up: the configured rate, announced with a Poll.
        let (tx, rx) = match to {
            State::Up => (us(self.cfg.interval), us(self.cfg.interval)),
            _ => (us(self.cfg.interval.max(SLOW_TX)), us(self.cfg.interval)),
        };
        if to == State::Up {
            self.start_poll(tx, rx);
        } else {
            self.polling = None;
            self.desired_tx = tx;
            self.required_rx = rx;
        }
        out.push(Action::StateChanged {
            from,
            to,
            diag: why,
        });
        out.push(Action::SendNow);
    }

    fn start_poll(&mut self, tx: u32, rx: u32) {
        if (tx, rx) == (self.desired_tx, self.required_rx) {
            return;
        }
        if self.polling.is_none() {
            self.polling = Some((self.desired_tx, self.required_rx));
        }
        self.desired_tx = tx;
        self.required_rx = rx;
    }

    /// A packet that passed `packet::parse` and was matched to this
    /// session (section 6.8.6, from "set bfd.RemoteDiscr" on).
    pub fn receive(&mut self, p: &Packet) -> Vec<Action> {
        let mut out = vec![];
        if self.state == State::AdminDown {
            return out;
        }
        let before = self.tx_interval();
        self.remote_disc = p.my_disc;
        self.remote_state = p.state;
        self.remote_min_rx = p.required_min_rx;
        self.remote_desired_tx = p.desired_min_tx;
        self.remote_mult = p.detect_mult;
        self.heard = true;
        if p.fin {
            self.polling = None;
        }
        match (self.state, p.state) {
            (s, State::AdminDown) if s != State::Down => {
                self.set_state(State::Down, diag::NEIGHBOR_DOWN, &mut out)
            }
            (_, State::AdminDown) => {}
            (State::Down, State::Down) => self.set_state(State::Init, diag::NONE, &mut out),
            (State::Down, State::Init) => self.set_state(State::Up, diag::NONE, &mut out),
            (State::Init, State::Init | State::Up) => {
                self.set_state(State::Up, diag::NONE, &mut out)
            }
            (State::Up, State::Down) => self.set_state(State::Down, diag::NEIGHBOR_DOWN, &mut out),
            _ => {}
        }
        if p.poll {
            let mut f = self.packet();
            f.poll = false;
            f.fin = true;
            out.push(Action::SendFinal(f));
        }
        if self.tx_interval() < before {
            out.push(Action::Reschedule);
        }
        out
    }

    /// The detection time passed without a packet (section 6.8.4).
    pub fn expired(&mut self) -> Vec<Action> {
        let mut out = vec![];
        if matches!(self.state, State::Init | State::Up) {
            self.set_state(State::Down, diag::DETECTION_EXPIRED, &mut out);
        }
        self.remote_disc = 0;
        self.heard = false;
        out
    }

    /// vipd stops on purpose: the remote sees AdminDown, not a failure
    /// (section 6.8.16).
    pub fn admin_down(&mut self) -> Vec<Action> {
        let mut out = vec![];
        self.set_state(State::AdminDown, diag::ADMIN_DOWN, &mut out);
        self.heard = false;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: Config = Config {
        interval: Duration::from_millis(300),
        detect_mult: 3,
    };

    fn from_remote(state: State, disc: u32) -> Packet {
        Packet {
            diag: 0,
            state,
            poll: false,
            fin: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_disc: 42,
            your_disc: disc,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
        }
    }

    fn changed(a: &[Action]) -> Option<(State, State, u8)> {
        a.iter().find_map(|a| match a {
            Action::StateChanged { from, to, diag } => Some((*from, *to, *diag)),
            _ => None,
        })
    }

    fn up() -> Session {
        let mut s = Session::new(CFG, 7);
        s.receive(&from_remote(State::Down, 0));
        s.receive(&from_remote(State::Up, 7));
        assert_eq!(s.state, State::Up);
        s
    }

    #[test]
    fn down_to_init_on_down_and_to_up_on_init() {
        let mut s = Session::new(CFG, 7);
        assert_eq!(s.packet().desired_min_tx, 1_000_000, "slow until Up");
        let a = s.receive(&from_remote(State::Down, 0));
        assert_eq!(changed(&a), Some((State::Down, State::Init, 0)));
        assert!(a.contains(&Action::SendNow));
        assert_eq!(s.remote_disc, 42);
        assert_eq!(s.packet().your_disc, 42);
        let mut s = Session::new(CFG, 7);
        let a = s.receive(&from_remote(State::Init, 7));
        assert_eq!(changed(&a), Some((State::Down, State::Up, 0)));
    }

    #[test]
    fn init_to_up_on_init_or_up_and_up_stays_up() {
        for remote in [State::Init, State::Up] {
            let mut s = Session::new(CFG, 7);
            s.receive(&from_remote(State::Down, 0));
            let a = s.receive(&from_remote(remote, 7));
            assert_eq!(changed(&a), Some((State::Init, State::Up, 0)));
        }
        let mut s = up();
        assert_eq!(changed(&s.receive(&from_remote(State::Up, 7))), None);
        assert_eq!(changed(&s.receive(&from_remote(State::Init, 7))), None);
        // Down stays Down on Up (the remote must come through Init).
        let mut s = Session::new(CFG, 7);
        assert_eq!(changed(&s.receive(&from_remote(State::Up, 7))), None);
    }

    #[test]
    fn up_to_down_when_the_remote_says_down_or_admin_down() {
        let mut s = up();
        let a = s.receive(&from_remote(State::Down, 7));
        assert_eq!(
            changed(&a),
            Some((State::Up, State::Down, diag::NEIGHBOR_DOWN))
        );
        let mut s = up();
        let a = s.receive(&from_remote(State::AdminDown, 7));
        assert_eq!(
            changed(&a),
            Some((State::Up, State::Down, diag::NEIGHBOR_DOWN))
        );
        let mut s = Session::new(CFG, 7);
        assert_eq!(changed(&s.receive(&from_remote(State::AdminDown, 0))), None);
    }

    #[test]
    fn expiry_takes_init_and_up_down_and_forgets_the_remote() {
        let mut s = up();
        let a = s.expired();
        assert_eq!(
            changed(&a),
            Some((State::Up, State::Down, diag::DETECTION_EXPIRED))
        );
        assert_eq!(s.remote_disc, 0);
        assert_eq!(s.detection_time(), None, "disarmed until heard again");
        assert_eq!(s.packet().desired_min_tx, 1_000_000, "slow again");
        let mut s = Session::new(CFG, 7);
        s.receive(&from_remote(State::Down, 0));
        assert_eq!(changed(&s.expired()).map(|c| c.1), Some(State::Down));
        let mut s = Session::new(CFG, 7);
        assert_eq!(changed(&s.expired()), None);
    }

    #[test]
    fn admin_down_is_sent_and_ignores_what_comes_in() {
        let mut s = up();
        let a = s.admin_down();
        assert_eq!(
            changed(&a),
            Some((State::Up, State::AdminDown, diag::ADMIN_DOWN))
        );
        assert_eq!(s.packet().state, State::AdminDown);
        assert_eq!(s.packet().diag, diag::ADMIN_DOWN);
        assert!(s.receive(&from_remote(State::Up, 7)).is_empty());
        assert_eq!(s.state, State::AdminDown);
    }

    #[test]
    fn going_up_polls_for_the_fast_rate_and_the_final_ends_it() {
        let mut s = Session::new(CFG, 7);
        s.receive(&from_remote(State::Down, 0));
        assert_eq!(s.tx_interval(), SLOW_TX);
        s.receive(&from_remote(State::Up, 7));
        let p = s.packet();
        assert!(p.poll, "the new intervals are announced with P");
        assert_eq!(p.desired_min_tx, 300_000);
        // A decrease of TX applies at once; the detection time keeps the
        // slower receive interval until the Final.
        assert_eq!(s.tx_interval(), Duration::from_millis(300));
        let mut fin = from_remote(State::Up, 7);
        fin.fin = true;
        s.receive(&fin);
        assert!(!s.packet().poll);
        assert_eq!(
            s.intervals(),
            (Duration::from_millis(300), Duration::from_millis(300))
        );
        assert_eq!(s.detection_time(), Some(Duration::from_millis(900)));
    }

    #[test]
    fn a_poll_is_answered_with_a_final_at_once() {
        let mut s = up();
        let mut p = from_remote(State::Up, 7);
        p.poll = true;
        p.desired_min_tx = 500_000;
        let a = s.receive(&p);
        let f = a
            .iter()
            .find_map(|a| match a {
                Action::SendFinal(f) => Some(*f),
                _ => None,
            })
            .expect("a Final");
        assert!(f.fin && !f.poll && f.state == State::Up);
        // The remote's slower TX widens the detection time at once.
        assert_eq!(s.detection_time(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn the_slower_side_sets_the_rates() {
        let mut s = up();
        let mut p = from_remote(State::Up, 7);
        p.fin = true;
        p.required_min_rx = 1_000_000;
        p.desired_min_tx = 100_000;
        p.detect_mult = 5;
        s.receive(&p);
        assert_eq!(
            s.tx_interval(),
            Duration::from_secs(1),
            "the remote receives no faster"
        );
        assert_eq!(
            s.detection_time(),
            Some(Duration::from_millis(1500)),
            "the remote's multiplier times our RX (300 ms beats its 100 ms TX)"
        );
    }

    #[test]
    fn a_remote_that_speeds_up_reschedules_the_next_packet() {
        // FRR asks for 1 s while Down or Init, 300 ms once Up.
        let mut s = Session::new(CFG, 9);
        let mut p = from_remote(State::Init, 0);
        p.required_min_rx = 1_000_000;
        let a = s.receive(&p);
        assert_eq!(s.state, State::Up);
        assert_eq!(s.tx_interval(), Duration::from_secs(1));
        assert!(!a.contains(&Action::Reschedule), "{a:?}");
        let mut p = from_remote(State::Up, 9);
        p.poll = true;
        let a = s.receive(&p);
        assert_eq!(s.tx_interval(), Duration::from_millis(300));
        assert!(a.contains(&Action::Reschedule), "{a:?}");
        // The same rate again: nothing to move.
        let a = s.receive(&from_remote(State::Up, 9));
        assert!(!a.contains(&Action::Reschedule), "{a:?}");
    }

    #[test]
    fn jitter_stays_within_section_6_8_7() {
        let s = up();
        let t = s.tx_interval();
        assert_eq!(s.jittered(0.0), t.mul_f64(0.75));
        assert!(s.jittered(0.999) <= t && s.jittered(0.999) > t.mul_f64(0.99));
        let one = Session::new(
            Config {
                detect_mult: 1,
                ..CFG
            },
            7,
        );
        assert!(one.jittered(0.999) <= one.tx_interval().mul_f64(0.90));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Ev {
        Rx(u8, bool, bool, u32, u32, u8),
        Expire,
        AdminDown,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            8 => (0u8..4, any::<bool>(), any::<bool>(), 1u32..2_000_000, 1u32..2_000_000, 1u8..10)
                .prop_map(|(s, p, f, tx, rx, m)| Ev::Rx(s, p, f, tx, rx, m)),
            2 => Just(Ev::Expire),
            1 => Just(Ev::AdminDown),
        ]
    }

    proptest! {
        /// Whatever arrives in whatever order: never faster than a second
        /// while not Up, never faster than the remote accepts, a detection
        /// time only once something was heard, and Up only through the
        /// remote saying Init or Up.
        #[test]
        fn invariants_hold_under_any_events(evs in proptest::collection::vec(ev(), 0..60)) {
            let cfg = Config { interval: Duration::from_millis(100), detect_mult: 3 };
            let mut s = Session::new(cfg, 7);
            for e in evs {
                let before = s.state;
                let (acts, remote) = match e {
                    Ev::Rx(st, poll, fin, tx, rx, m) => {
                        let state = [State::AdminDown, State::Down, State::Init, State::Up][st as usize];
                        let p = Packet { diag: 0, state, poll, fin, cpi: false, demand: false,
                            detect_mult: m, my_disc: 9, your_disc: 7,
                            desired_min_tx: tx, required_min_rx: rx, required_min_echo_rx: 0 };
                        (s.receive(&p), Some((state, rx)))
                    }
                    Ev::Expire => (s.expired(), None),
                    Ev::AdminDown => (s.admin_down(), None),
                };
                if s.state != State::Up {
                    prop_assert!(s.packet().desired_min_tx >= 1_000_000);
                }
                if s.state == State::Up && before != State::Up {
                    prop_assert!(matches!(remote, Some((State::Init | State::Up, _))));
                }
                if let Some((_, rx)) = remote.filter(|_| s.state != State::AdminDown) {
                    prop_assert!(s.tx_interval() >= Duration::from_micros(u64::from(rx)));
                }
                if s.state == State::AdminDown {
                    prop_assert_eq!(s.detection_time(), None);
                }
                let finals = acts.iter().filter(|a| matches!(a, Action::SendFinal(_))).count();
                prop_assert!(finals <= 1);
            }
        }
    }
}
