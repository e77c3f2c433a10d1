//! One time budget over the whole API exchange of a login. Time the person spends typing is
//! not charged; every request, every wait for `Retry-After`, every poll is.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Deadline {
    budget: Duration,
    spent: Duration,
}

impl Deadline {
    pub fn new(budget: Duration) -> Self {
        Deadline {
            budget,
            spent: Duration::ZERO,
        }
    }

    /// A budget of which `spent` is already used (a login's calls handed to the agent).
    pub fn with_spent(budget: Duration, spent: Duration) -> Self {
        Deadline { budget, spent }
    }

    pub fn spent(&self) -> Duration {
        self.spent
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// What is left, or `None` once the budget is spent.
    pub fn remaining(&self) -> Option<Duration> {
        self.budget.checked_sub(self.spent).filter(|d| !d.is_zero())
    }

    /// Runs `f`, charging the time it takes.
    pub fn charge<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.spent += start.elapsed();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_add_up_and_run_out() {
        let mut d = Deadline::new(Duration::from_millis(30));
        assert_eq!(d.remaining(), Some(Duration::from_millis(30)));
        d.charge(|| std::thread::sleep(Duration::from_millis(20)));
        let left = d.remaining().unwrap();
        assert!(left <= Duration::from_millis(10), "{left:?}");
        d.charge(|| std::thread::sleep(Duration::from_millis(15)));
        assert_eq!(d.remaining(), None);
    }
}
