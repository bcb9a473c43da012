//! The leader's side of [`Runner`]: one term, renewed until it ends, its work stopped by the work
//! deadline, and the Lease released.

use super::*;

// === impl Runner ===

impl Runner<'_> {
    /// Leads one term, from a successful acquire sent at `sent_at`, until it ends and its work is gone;
    /// returns why it ended.
    ///
    /// The work must be gone by the term's work deadline (`sent_at + lease_duration - margin` of the last
    /// successful write): after the renew deadline it gets the rest of that window (bounded by the stop
    /// timeout); when the Lease is known to be someone else's it is aborted at once; on shutdown the Lease
    /// keeps being renewed while the work drains, and is released after it has stopped.
    pub(super) async fn lead(&mut self, lease: ObservedLease, sent_at: Instant) -> StopReason {
        // A follower's open watch goes on as the leader's own: nothing was written between the version we
        // took over and our write (it was guarded by that version), so its next event is our write. One
        // request fewer per handover; a watch that fails is reopened from our last write.
        let term = Term {
            holder: self.identity().to_string(),
            transitions: lease.record.lease_transitions,
            acquire_time: lease.record.acquire_time,
        };
        info!(
            identity = %self.identity(),
            lease = %self.lock.describe(),
            term = term.transitions,
            "became leader"
        );
        self.observe(lease.clone());
        let mut tenure = Tenure {
            lease,
            valid_until: sent_at + self.config().renew_deadline,
            next_renew: Instant::now() + self.config().retry_period,
            may_watch: true,
            yielding: false,
        };
        self.inner.state.send_modify(|state| {
            state.term = Some(term.clone());
            tenure.publish(state, self.config());
        });
        let mut work = Work::start(self.inner, term.clone(), &self.shutdown);

        let shutdown = self.shutdown.clone();
        let reason = loop {
            let ended = async {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => None,
                    joined = work.ended() => Some(joined),
                }
            };
            match self.renew_while(&mut tenure, ended).await {
                Err(reason) => break reason,
                Ok(None) => break StopReason::Shutdown,
                // A normal return keeps leadership (client-go): the work may be a one-shot job.
                Ok(Some(Ok(()))) => work.task = None,
                Ok(Some(Err(error))) => {
                    work.task = None;
                    error!(
                        identity = %self.identity(),
                        lease = %self.lock.describe(),
                        term = term.transitions,
                        %error,
                        "leader-only work failed (it returned an error or panicked); ending the term so \
                         that another candidate can lead"
                    );
                    self.inner.observer.on_work_failure();
                    break StopReason::WorkFailed { error };
                }
            }
        };

        // Stop believing first (state and is_leader), then stop the work, then release. When the Lease is
        // someone else's, its new holder may already run: the work must go at once.
        let now = Instant::now();
        let kill_now = matches!(
            reason,
            StopReason::LeaseLost { .. } | StopReason::IdentityInUse | StopReason::Released
        );
        self.inner.state.send_modify(|state| {
            state.term = None;
            state.valid_until = None;
            if kill_now {
                state.work_deadline = Some(now);
            }
        });
        warn!(
            identity = %self.identity(),
            lease = %self.lock.describe(),
            term = term.transitions,
            %reason,
            "stopped leading"
        );
        work.token.cancel();
        let (stopped, ours) = match &reason {
            StopReason::Shutdown | StopReason::Yielded { .. } => {
                tenure.yielding = true;
                self.drain(&mut work, &mut tenure).await
            }
            StopReason::WorkFailed { .. } => (true, true),
            other => (self.stop_after(other, &mut work, &tenure).await, false),
        };
        let ours = ours || reason == StopReason::RenewDeadlineExceeded;
        self.inner
            .state
            .send_modify(|state| state.work_deadline = None);
        if !matches!(self.watching, Watching::Polling) {
            self.watching = Watching::Idle;
        }
        if self.config().release_on_cancel && ours {
            if stopped {
                self.await_withdrawn().await;
                self.release().await;
            } else {
                warn!(
                    identity = %self.identity(),
                    "leader-only work did not stop; not releasing the lease, it will expire instead"
                );
            }
        }
        self.inner.callbacks.stopped_leading(reason.clone());
        reason
    }

    /// Graceful stop: keeps renewing while the work drains (for at most the stop timeout), so no follower
    /// takes over while it runs. Returns whether the work stopped and whether the Lease is still ours.
    async fn drain(&mut self, work: &mut Work, tenure: &mut Tenure) -> (bool, bool) {
        let Some(task) = work.task.as_mut() else {
            return (true, true);
        };
        let stop_by = Instant::now() + self.config().effective_stop_timeout();
        match self.renew_while(tenure, timeout_at(stop_by, task)).await {
            Ok(Ok(joined)) => {
                work.task = None;
                report_stopped(outcome(joined));
                (true, true)
            }
            Ok(Err(_)) => (work.stop_by(Instant::now(), self.config()).await, true),
            Err(lost) => {
                warn!(
                    identity = %self.identity(),
                    reason = %lost,
                    "the term ended while its work was draining"
                );
                (
                    self.stop_after(&lost, work, tenure).await,
                    lost == StopReason::RenewDeadlineExceeded,
                )
            }
        }
    }

    /// Stops the work of a term that ended for `reason` (not a graceful stop): at once when the Lease is
    /// someone else's, else by the work deadline. Whether the work stopped.
    async fn stop_after(&mut self, reason: &StopReason, work: &mut Work, tenure: &Tenure) -> bool {
        let deadline = match reason {
            StopReason::RenewDeadlineExceeded
            | StopReason::Shutdown
            | StopReason::Yielded { .. }
            | StopReason::WorkFailed { .. } => {
                let by_timeout = Instant::now() + self.config().effective_stop_timeout();
                by_timeout.min(tenure.work_deadline(self.config()))
            }
            StopReason::LeaseLost { .. } | StopReason::IdentityInUse | StopReason::Released => {
                let now = Instant::now();
                self.inner.state.send_if_modified(|state| {
                    let later = state.work_deadline.is_none_or(|d| d > now);
                    if later {
                        state.work_deadline = Some(now);
                    }
                    later
                });
                now
            }
        };
        work.stop_by(deadline, self.config()).await
    }

    /// Renews every retry period, and watches our own Lease, until `until` completes (`Ok` with its
    /// output) or the term ends (`Err` with why). Leadership is valid until the send time of the last
    /// successful write plus `renew_deadline`; at that instant the term ends even while a request hangs.
    async fn renew_while<F: Future>(
        &mut self,
        tenure: &mut Tenure,
        until: F,
    ) -> Result<F::Output, StopReason> {
        tokio::pin!(until);
        loop {
            if tenure.may_watch && matches!(self.watching, Watching::Idle) {
                let by = tenure.next_renew.min(tenure.valid_until);
                let resume_from = tenure.lease.resource_version.clone();
                tokio::select! {
                    biased;
                    output = &mut until => return Ok(output),
                    opened = self.open_own_watch(&resume_from, by) => tenure.may_watch = opened,
                }
            }
            let event = match &mut self.watching {
                Watching::Open { events, .. } => {
                    tokio::select! {
                        biased;
                        output = &mut until => return Ok(output),
                        () = sleep_until(tenure.valid_until) => return Err(StopReason::RenewDeadlineExceeded),
                        () = sleep_until(tenure.next_renew) => None,
                        event = events.get_mut().next() => Some(event),
                    }
                }
                Watching::Idle | Watching::Polling => {
                    tokio::select! {
                        biased;
                        output = &mut until => return Ok(output),
                        () = sleep_until(tenure.valid_until) => return Err(StopReason::RenewDeadlineExceeded),
                        () = sleep_until(tenure.next_renew) => None,
                    }
                }
            };
            if let Some(event) = event {
                self.on_own_watch_event(event, tenure)?;
                continue;
            }
            // A process frozen past its deadline resumes here: check the clock before any write.
            let sent_at = Instant::now();
            if sent_at >= tenure.valid_until {
                return Err(StopReason::RenewDeadlineExceeded);
            }
            // A renewal keeps what others wrote into the election record: `strategy` (coordinated election)
            // and `preferredHolder` (we were asked to yield, and do so once our work has stopped).
            let desired = LeaderElectionRecord {
                strategy: tenure.lease.record.strategy.clone(),
                preferred_holder: tenure.lease.record.preferred_holder.clone(),
                ..self.desired(
                    tenure.lease.record.acquire_time,
                    tenure.lease.record.lease_transitions,
                )
            };
            self.own.sending(&desired, self.config().lease_duration);
            let renewed = tokio::select! {
                biased;
                output = &mut until => return Ok(output),
                renewed = self.request_until(
                    "update",
                    Phase::Renew,
                    tenure.valid_until,
                    self.lock.update(&desired, &tenure.lease.resource_version),
                ) => renewed,
            };
            match &renewed {
                Ok(stored) => self.own.stored(&desired, &stored.record),
                Err(LockError::Conflict | LockError::NotFound) => self.own.refused(&desired),
                Err(_) => {}
            }
            match renewed {
                Ok(renewed) => {
                    tenure.lease = renewed.clone();
                    tenure.valid_until = sent_at + self.config().renew_deadline;
                    tenure.next_renew = Instant::now() + self.config().retry_period;
                    tenure.may_watch = true;
                    self.observe(renewed);
                    self.inner
                        .state
                        .send_modify(|state| tenure.publish(state, self.config()));
                    tenure.check_preference(self.identity())?;
                }
                Err(LockError::Conflict) => {
                    self.inner.observer.on_slow_path();
                    let read = tokio::select! {
                        biased;
                        output = &mut until => return Ok(output),
                        read = self.reread(tenure.valid_until) => read,
                    };
                    match read? {
                        Some(fresh) => {
                            tenure.lease = fresh;
                            tenure.next_renew = Instant::now();
                            tenure.check_preference(self.identity())?;
                        }
                        None => tenure.next_renew = Instant::now() + self.config().retry_period,
                    }
                }
                Err(LockError::NotFound) => {
                    self.seen = Seen::Missing;
                    self.publish_observed();
                    return Err(StopReason::Released);
                }
                Err(err) => {
                    self.log_transient("renewing the lease", &err);
                    tenure.next_renew = Instant::now() + self.config().retry_period;
                }
            }
        }
    }

    /// Opens the leader's watch of its own Lease from `resume_from` (our last write), bounded by `by`.
    /// `false` when it failed: not tried again before the next renewal. A forbidden watch is not tried
    /// again in this run.
    async fn open_own_watch(&mut self, resume_from: &str, by: Instant) -> bool {
        match self
            .request_until("watch", Phase::Watch, by, self.lock.watch(resume_from))
            .await
        {
            Ok(events) => {
                self.watching = Watching::open(events);
                true
            }
            Err(LockError::Forbidden(message)) => {
                debug!(identity = %self.identity(), %message,
                    "watching our own lease is forbidden; renew conflicts will tell us of a takeover");
                self.watching = Watching::Polling;
                true
            }
            Err(err) => {
                debug!(identity = %self.identity(), error = %err, "could not watch our own lease");
                false
            }
        }
    }

    /// What the leader's watch of its own Lease says: the term ends at once when the Lease was taken,
    /// released or deleted by someone else, also by another process under our identity (a write naming
    /// us that this run did not make).
    fn on_own_watch_event(
        &mut self,
        event: Option<Result<LeaseEvent, LockError>>,
        tenure: &mut Tenure,
    ) -> Result<(), StopReason> {
        match event {
            Some(Ok(LeaseEvent::Applied(lease))) => {
                if same_write(&lease.record, &tenure.lease.record) {
                    // Our own last write, or a write over it of metadata or of a request to yield: guard
                    // the next renewal with the newest version instead of running into a conflict.
                    tenure.lease = lease.clone();
                    self.observe(lease);
                    tenure.check_preference(self.identity())?;
                } else if !self.own.wrote(&lease.record) {
                    let reason = self.lost_to(&lease.record);
                    self.observe(lease);
                    return Err(reason);
                }
                // Else an earlier write of ours delivered late, or one whose answer was lost: the next
                // renewal (or its conflict) settles which version is current.
            }
            Some(Ok(LeaseEvent::Deleted(rv))) => {
                self.seen = Seen::Missing;
                self.resume_from = Some(rv);
                self.publish_observed();
                return Err(StopReason::Released);
            }
            Some(Ok(LeaseEvent::Bookmark(_))) => {}
            Some(Err(err)) => {
                debug!(identity = %self.identity(), error = %err, "the watch of our own lease failed");
                self.watching = Watching::Idle;
                tenure.may_watch = false;
            }
            None => {
                self.watching = Watching::Idle;
                tenure.may_watch = false;
            }
        }
        Ok(())
    }

    /// Why the term ends when the Lease holds `record`, a record this run did not write.
    fn lost_to(&self, record: &LeaderElectionRecord) -> StopReason {
        if record.holder_identity.is_empty() {
            StopReason::Released
        } else if record.holder_identity == self.identity() {
            StopReason::IdentityInUse
        } else {
            StopReason::LeaseLost {
                new_holder: record.holder_identity.clone(),
            }
        }
    }

    /// client-go's slow path: after a renew conflict, GET and see whether the Lease still holds our own
    /// write (client-go only checks that it names us): `Ok(Some)` ours, `Ok(None)` the read failed
    /// (retry), `Err` the term ended.
    async fn reread(&mut self, valid_until: Instant) -> Result<Option<ObservedLease>, StopReason> {
        let read = self
            .request_until("get", Phase::SlowPath, valid_until, self.lock.get())
            .await;
        match read {
            Ok(Some(fresh)) => {
                let ours = self.own.wrote(&fresh.record);
                let reason = self.lost_to(&fresh.record);
                self.observe(fresh.clone());
                if ours { Ok(Some(fresh)) } else { Err(reason) }
            }
            Ok(None) => {
                self.seen = Seen::Missing;
                self.publish_observed();
                Err(StopReason::Released)
            }
            Err(err) => {
                self.log_transient("reading the lease after a renew conflict", &err);
                Ok(None)
            }
        }
    }

    /// Releases the Lease if it still holds our own write: fresh GET, then a PUT guarded by what was read,
    /// with holder `""`, `leaseDurationSeconds: 1` and the transitions kept; retried on conflict until
    /// `renew_deadline` has passed (client-go's `release`, fixed to check the fresh record). A Lease naming
    /// us that another process wrote (a new incarnation) is not ours to release.
    pub(super) async fn release(&mut self) -> bool {
        let deadline = Instant::now() + self.config().renew_deadline;
        while Instant::now() < deadline {
            let read = self
                .request_until("get", Phase::Release, deadline, self.lock.get())
                .await;
            let fresh = match read {
                Ok(Some(fresh)) if self.own.wrote(&fresh.record) => fresh,
                Ok(Some(other)) => {
                    debug!(identity = %self.identity(), holder = %other.record.holder_identity,
                        "not releasing: the lease no longer holds our write");
                    self.observe(other);
                    return false;
                }
                Ok(None) => return false,
                Err(err) => {
                    self.log_transient("reading the lease to release it", &err);
                    self.sleep_until_or(deadline, self.jittered_retry_period())
                        .await;
                    continue;
                }
            };
            let released = fresh.record.released(Timestamp::now());
            match self
                .request_until(
                    "update",
                    Phase::Release,
                    deadline,
                    self.lock.update(&released, &fresh.resource_version),
                )
                .await
            {
                Ok(lease) => {
                    info!(identity = %self.identity(), lease = %self.lock.describe(), "released the lease");
                    self.last_release = Some(lease.record.clone());
                    self.observe(lease);
                    return true;
                }
                Err(LockError::Conflict) => {}
                Err(err) => {
                    self.log_transient("releasing the lease", &err);
                    self.sleep_until_or(deadline, self.jittered_retry_period())
                        .await;
                }
            }
        }
        warn!(identity = %self.identity(), "could not release the lease in time; it will expire instead");
        false
    }

    /// On shutdown under coordinated election: has our LeaseCandidate deleted, waiting for it at most a
    /// request timeout, so that the controller does not assign the released Lease to us again.
    pub(super) async fn await_withdrawn(&self) {
        if let Some(coordination) = &self.inner.coordination
            && self.shutdown.is_cancelled()
        {
            coordination
                .withdraw(self.config().effective_request_timeout())
                .await;
        }
    }

    async fn sleep_until_or(&self, deadline: Instant, period: Duration) {
        sleep_until(deadline.min(Instant::now() + period)).await;
    }
}
