//! A backend's health as a pure state: check results in, changes out.

/// Rise/fall counting over consecutive check results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    rise: u32,
    fall: u32,
    /// `None` until the first result: a backend is neither announced as
    /// healthy nor held back by a history it does not have yet.
    healthy: Option<bool>,
    /// Consecutive results that disagree with `healthy`.
    streak: u32,
}

impl Health {
    pub fn new(rise: u32, fall: u32) -> Health {
        Health {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: None,
            streak: 0,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy == Some(true)
    }

    /// A result has come in.
    pub fn known(&self) -> bool {
        self.healthy.is_some()
    }

    /// Takes one check result; returns the new state when it changed. The
    /// first result decides at once (a starting vipd should not wait `rise`
    /// intervals to serve); after that it takes `rise` successes in a row to
    /// come back and `fall` failures in a row to go.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        let Some(now) = self.healthy else {
            self.healthy = Some(ok);
            return Some(ok);
        };
        if ok == now {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { self.rise } else { self.fall };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.healthy = Some(ok);
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(h: &mut Health, results: &[bool]) -> Vec<Option<bool>> {
        results.iter().map(|&ok| h.observe(ok)).collect()
    }

    #[test]
    fn the_first_result_decides() {
        let mut h = Health::new(2, 3);
        assert!(!h.healthy() && !h.known());
        assert_eq!(h.observe(true), Some(true));
        assert!(h.known());
        assert!(h.healthy());
        let mut h = Health::new(2, 3);
        assert_eq!(h.observe(false), Some(false));
        assert!(!h.healthy());
    }

    #[test]
    fn fall_failures_in_a_row_take_it_out_and_rise_successes_bring_it_back() {
        let mut h = Health::new(2, 3);
        h.observe(true);
        // Two failures, then a success: the streak starts over.
        assert_eq!(run(&mut h, &[false, false, true]), [None, None, None]);
        assert!(h.healthy());
        assert_eq!(
            run(&mut h, &[false, false, false]),
            [None, None, Some(false)]
        );
        assert!(!h.healthy());
        // More failures change nothing; one success is not enough.
        assert_eq!(run(&mut h, &[false, true, false]), [None, None, None]);
        assert_eq!(run(&mut h, &[true, true]), [None, Some(true)]);
        assert!(h.healthy());
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut h = Health::new(0, 0);
        h.observe(true);
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(true), Some(true));
    }
}
