//! A re-armable timer for the producer's deadlines (the linger, the throttled records' backoff).
//!
//! The producer's loop turns once per user record. A fresh `sleep_until` per turn registered a
//! timer each time, and each registration that the timer driver had not planned for woke the
//! runtime's I/O driver through its eventfd: about nine per OTLP request at 5k spans/s. One
//! timer, moved only when its deadline moves, costs nothing on the turns in between.

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

#[derive(Default)]
pub struct Deadline {
    /// Created at the first deadline and reset from then on.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
}

impl Deadline {
    /// The armed deadline, if any.
    pub fn when(&self) -> Option<Instant> {
        self.armed
    }

    /// Aims the timer at `when`; `None` disarms it. Setting the deadline it has costs nothing.
    /// A disarmed timer stays registered where it was: the one wake-up it may still cause finds
    /// nothing due.
    pub fn set(&mut self, when: Option<Instant>) {
        if when == self.armed {
            return;
        }
        self.armed = when;
        if let Some(when) = when {
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(when),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(when))),
            }
        }
    }

    /// Resolves once the armed deadline has passed; never while disarmed.
    pub async fn elapsed(&mut self) {
        match (&self.armed, &mut self.sleep) {
            (Some(_), Some(sleep)) => sleep.await,
            _ => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_armed_deadline_and_follows_it_when_it_moves() {
        let start = Instant::now();
        let mut deadline = Deadline::default();
        deadline.set(Some(start + Duration::from_secs(10)));
        deadline.set(Some(start + Duration::from_secs(3)));
        deadline.elapsed().await;
        assert_eq!(
            Instant::now(),
            start + Duration::from_secs(3),
            "the moved deadline"
        );

        deadline.set(Some(start + Duration::from_secs(7)));
        deadline.set(Some(start + Duration::from_secs(7)));
        deadline.elapsed().await;
        assert_eq!(
            Instant::now(),
            start + Duration::from_secs(7),
            "armed again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_fires_while_disarmed() {
        let mut deadline = Deadline::default();
        let never = tokio::time::timeout(Duration::from_secs(3600), deadline.elapsed()).await;
        assert!(never.is_err(), "never armed");

        deadline.set(Some(Instant::now() + Duration::from_secs(1)));
        deadline.set(None);
        let never = tokio::time::timeout(Duration::from_secs(3600), deadline.elapsed()).await;
        assert!(never.is_err(), "disarmed before its deadline");
    }
}
