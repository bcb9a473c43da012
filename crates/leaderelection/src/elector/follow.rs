//! The follower's side of [`Runner`]: wait for the Lease to be free, expired or ours (by watch or
//! poll), decide, and acquire it.

use super::*;

// === impl Runner ===

impl Runner<'_> {
    /// Waits for the Lease to be free, expired or ours, and takes it. `None` on shutdown.
    pub(super) async fn follow(&mut self) -> Option<(ObservedLease, Instant)> {
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            if self.stale && !self.read().await {
                self.pause().await?;
                continue;
            }
            self.settle_lost_race();
            let decision = self.decide(Instant::now());
            match self.hold_back(&decision) {
                Hold::Act => {}
                Hold::Until(until) => {
                    self.wait(until).await?;
                    continue;
                }
                Hold::Reread => {
                    self.stale = true;
                    continue;
                }
            }
            match decision {
                Decision::Create => match self.create().await {
                    Ok(taken) => return Some(taken),
                    Err(Retry::Now) => {}
                    Err(Retry::Later) => self.pause().await?,
                },
                Decision::Take(lease) => match self.take(lease).await {
                    Ok(taken) => return Some(taken),
                    Err(Retry::Now) => {}
                    Err(Retry::Later) => self.pause().await?,
                },
                Decision::Wait(until) => {
                    self.report_identity_in_use();
                    self.wait(until).await?;
                }
            }
        }
    }

    /// Says that the Lease we wait for names our identity but holds a record this run did not write: at
    /// WARN for the first such record (an earlier run of this candidate may have written it and be gone,
    /// as after a restart), at ERROR once such records keep coming (another live process writes under our
    /// identity), at most once per lease duration.
    fn report_identity_in_use(&mut self) {
        let Seen::Present { lease, .. } = &self.seen else {
            return;
        };
        let record = &lease.record;
        if record.holder_identity != self.identity()
            || self.own.wrote(record)
            || self.assigned_to_us(record)
        {
            return;
        }
        let Some(first) = &self.foreign_seen else {
            warn!(
                identity = %self.identity(),
                lease = %self.lock.describe(),
                term = record.lease_transitions,
                "the lease names this candidate's identity but another process wrote it (an earlier run \
                 of this candidate, or another process with the same identity); not taking it until it \
                 expires by our clock"
            );
            self.foreign_seen = Some(record.clone());
            return;
        };
        if same_write(first, record) {
            return;
        }
        let now = Instant::now();
        if self
            .identity_alarm
            .is_some_and(|at| now < at + self.config().lease_duration)
        {
            return;
        }
        self.identity_alarm = Some(now);
        error!(
            identity = %self.identity(),
            lease = %self.lock.describe(),
            term = record.lease_transitions,
            "another process holds the lease under this candidate's identity {} and renews it: two \
             processes share one identity (a pod recreated with the same name while the old one still \
             runs, or a copied --identity); not taking it until it expires by our clock; give every \
             process its own identity (logged at most once per lease duration)",
            self.identity()
        );
        self.inner.observer.on_identity_in_use();
    }

    /// Whether `record` is an election controller's assignment of the Lease to us (coordinated election:
    /// `strategy` set, naming us, no `acquireTime`, which every elector writes when its term starts and
    /// the controller never does; `docs/design.md`, "An identity is not an incarnation").
    fn assigned_to_us(&self, record: &LeaderElectionRecord) -> bool {
        self.coordinated()
            && record.strategy.is_some()
            && record.acquire_time.is_none()
            && record.holder_identity == self.identity()
    }

    /// When the holder of `record`, first seen at `observed_at`, is gone by our clock; `None` when nobody
    /// else holds it (free, or a record this run wrote).
    fn foreign_expiry(
        &self,
        record: &LeaderElectionRecord,
        observed_at: Instant,
    ) -> Option<Instant> {
        (record.is_held() && !self.own.wrote(record)).then(|| observed_at + lease_duration(record))
    }

    fn decide(&self, now: Instant) -> Decision {
        let coordinated = self.coordinated();
        match &self.seen {
            // The election controller creates a coordinated Lease; the watch tells us when.
            Seen::Unknown | Seen::Missing if coordinated => {
                Decision::Wait(now + self.config().lease_duration)
            }
            Seen::Unknown | Seen::Missing => Decision::Create,
            Seen::Present { lease, .. }
                if coordinated
                    && lease.record.strategy.is_some()
                    && lease.record.holder_identity != self.identity() =>
            {
                // Taken only once the election controller names us (client-go `tryCoordinatedRenew`).
                Decision::Wait(now + self.config().lease_duration)
            }
            Seen::Present {
                lease,
                observed_at,
                prior_expiry,
            } => {
                let record = &lease.record;
                if !record.is_held() && record.preferred_other_than(self.identity()).is_some() {
                    // Released for a preferred holder: it takes the Lease first. If it does not within
                    // the record's duration (it is gone, or was never running), the candidate that
                    // released it for that one takes it back: a handover to nobody must not hand the
                    // work to whoever is fastest. The others wait one lease duration (ours), in case
                    // that candidate is gone too.
                    let deferred_until = if self.released_by_us(record) {
                        *observed_at + lease_duration(record)
                    } else {
                        *observed_at + lease_duration(record).max(self.config().lease_duration)
                    };
                    return if now >= deferred_until {
                        Decision::Take(lease.clone())
                    } else {
                        Decision::Wait(deferred_until)
                    };
                }
                if !record.is_held() || self.own.wrote(record) {
                    return Decision::Take(lease.clone());
                }
                // Held by another process, possibly under our identity: taken once it expired by our
                // clock. An election controller's assignment to us, once the holder before it has (the
                // controller judged that one's expiry by the server's clock).
                let expires_at = if self.assigned_to_us(record) {
                    prior_expiry.unwrap_or(now)
                } else {
                    *observed_at + lease_duration(record)
                };
                if now >= expires_at {
                    Decision::Take(lease.clone())
                } else {
                    Decision::Wait(expires_at)
                }
            }
        }
    }

    /// Whether a watching follower writes `decision` now. A free or expired Lease is taken after a
    /// staggered delay ([`Contention`]), unless it holds our own last write, is assigned to us, prefers us
    /// or is the record of our own release (then at once); a version we lost a race on is left alone until the watch shows the winner's
    /// write.
    fn hold_back(&mut self, decision: &Decision) -> Hold {
        let (version, record) = match decision {
            Decision::Wait(_) => return Hold::Act,
            Decision::Create => (None, None),
            Decision::Take(lease) => {
                let record = &lease.record;
                if self.own.wrote(record)
                    || self.assigned_to_us(record)
                    || record.preferred_holder.as_deref() == Some(self.identity())
                    || self.released_by_us(record)
                {
                    return Hold::Act;
                }
                (Some(lease.resource_version.as_str()), Some(record))
            }
        };
        let now = Instant::now();
        if let Some(holdoff) = &self.holdoff
            && holdoff.version.as_deref() == version
        {
            return if now < holdoff.until {
                Hold::Until(holdoff.until)
            } else if holdoff.lost {
                self.holdoff = None;
                Hold::Reread
            } else {
                Hold::Act
            };
        }
        self.holdoff = None;
        if !matches!(self.watching, Watching::Open { .. }) {
            // Not watching: nothing tells us of a winner, and polls are already spread in time.
            return Hold::Act;
        }
        let delay = self.contention.delay(self.config().retry_period);
        if delay.is_zero() {
            return Hold::Act;
        }
        let until = now + delay;
        self.holdoff = Some(Holdoff {
            version: version.map(str::to_owned),
            record: record.cloned(),
            until,
            lost: false,
        });
        Hold::Until(until)
    }

    /// After a race we lost, once a newer version of the Lease is seen: count it as lost to another
    /// candidate when that version names a new holder or term ([`Contention`]).
    fn settle_lost_race(&mut self) {
        let Some(holdoff) = self.holdoff.as_ref().filter(|h| h.lost) else {
            return;
        };
        let (version, record) = match &self.seen {
            Seen::Present { lease, .. } => (Some(&lease.resource_version), Some(&lease.record)),
            Seen::Missing => (None, None),
            Seen::Unknown => return,
        };
        if holdoff.version.as_ref() == version {
            return;
        }
        let taken = match (&holdoff.record, record) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(before), Some(now)) => {
                now.is_held()
                    && (now.holder_identity != before.holder_identity
                        || now.lease_transitions != before.lease_transitions)
            }
        };
        if taken {
            self.contention.lost();
        }
        self.holdoff = None;
    }

    /// GETs the Lease. `false` on a transient error (already logged).
    async fn read(&mut self) -> bool {
        match self.request("get", Phase::Acquire, self.lock.get()).await {
            Ok(Some(lease)) => {
                self.drop_watch_if_it_missed(Some(&lease.resource_version));
                self.observe(lease);
                self.stale = false;
                true
            }
            Ok(None) => {
                self.drop_watch_if_it_missed(None);
                self.seen = Seen::Missing;
                self.stale = false;
                self.publish_observed();
                true
            }
            Err(err) => {
                self.log_transient("reading the lease", &err);
                false
            }
        }
    }

    /// A read found the Lease changed while the watch delivered nothing of it: the watch is dead (a stalled
    /// connection can stay open and silent). Drop it; the next wait opens a new one from what was read.
    fn drop_watch_if_it_missed(&mut self, read: Option<&str>) {
        let seen = match &self.seen {
            Seen::Present { lease, .. } => Some(lease.resource_version.as_str()),
            Seen::Missing => None,
            Seen::Unknown => return,
        };
        if seen != read && matches!(self.watching, Watching::Open { .. }) {
            debug!(identity = %self.identity(), "the watch missed a change; opening a new one");
            self.watching = Watching::Idle;
        }
    }

    /// Records what we saw. The expiry clock restarts only when the election record changes (holder,
    /// renewTime, acquireTime, leaseTransitions, leaseDurationSeconds...): a write that changes only
    /// metadata (a label, an annotation) is not a renewal, as in client-go's record comparison. The
    /// `resourceVersion` is always kept, to guard the next write.
    pub(super) fn observe(&mut self, lease: ObservedLease) {
        let now = Instant::now();
        let first_seen = || {
            self.lock
                .first_seen(&lease)
                .filter(|seen| *seen <= now)
                .unwrap_or(now)
        };
        let (observed_at, prior_expiry) = match &self.seen {
            Seen::Present {
                lease: previous,
                observed_at,
                prior_expiry,
            } if previous.record == lease.record => (*observed_at, *prior_expiry),
            Seen::Present {
                lease: previous,
                observed_at,
                prior_expiry,
            } => {
                let previous_expiry = self.foreign_expiry(&previous.record, *observed_at);
                // An assignment replacing an assignment keeps the wait for the holder before both.
                let inherited = (previous.record.holder_identity == self.identity()
                    && !self.own.wrote(&previous.record))
                .then_some(*prior_expiry)
                .flatten();
                (first_seen(), previous_expiry.max(inherited))
            }
            Seen::Missing => (first_seen(), None),
            // The first record of this run: who held the Lease before it is unknown, so a record assigned
            // to us waits out its own duration.
            Seen::Unknown => {
                let observed_at = first_seen();
                (observed_at, self.foreign_expiry(&lease.record, observed_at))
            }
        };
        self.highest_term = self.highest_term.max(Some(lease.record.lease_transitions));
        let same_version = matches!(&self.seen, Seen::Present { lease: previous, .. }
            if previous.resource_version == lease.resource_version);
        if !same_version || self.resume_from.is_none() {
            // A re-read of the same version keeps a newer place to resume the watch from (a list's or a
            // bookmark's): the Lease's own version may be older than the watch history.
            self.resume_from = Some(lease.resource_version.clone());
        }
        self.seen = Seen::Present {
            lease,
            observed_at,
            prior_expiry,
        };
        self.publish_observed();
    }

    /// Publishes the observed holder and reports a new one.
    pub(super) fn publish_observed(&mut self) {
        let (leader, transitions) = match &self.seen {
            Seen::Present { lease, .. } if lease.record.is_held() => (
                Some(lease.record.holder_identity.clone()),
                lease.record.lease_transitions,
            ),
            Seen::Present { lease, .. } => (None, lease.record.lease_transitions),
            Seen::Unknown | Seen::Missing => (None, 0),
        };
        self.inner.state.send_if_modified(|state| {
            let changed = state.leader != leader || state.lease_transitions != transitions;
            state.leader.clone_from(&leader);
            state.lease_transitions = transitions;
            changed
        });
        if let Some(leader) = leader
            && self.reported_leader.as_ref() != Some(&leader)
        {
            info!(identity = %self.identity(), new_leader = %leader, "new leader observed");
            self.inner.callbacks.new_leader(&leader);
            self.reported_leader = Some(leader);
        }
    }

    pub(super) fn desired(
        &self,
        acquire_time: Option<Timestamp>,
        transitions: i32,
    ) -> LeaderElectionRecord {
        let now = truncate_to_micros(Timestamp::now());
        LeaderElectionRecord {
            holder_identity: self.identity().to_string(),
            lease_duration_seconds: self.config().lease_duration_seconds(),
            acquire_time: Some(acquire_time.unwrap_or(now)),
            renew_time: Some(now),
            lease_transitions: transitions,
            strategy: None,
            preferred_holder: None,
        }
    }

    /// Creates the Lease (POST). Its term is above any we have seen: after a deletion the term number does
    /// not go back to 0. A fresh candidate that never saw the Lease writes 0, as client-go does.
    async fn create(&mut self) -> Result<(ObservedLease, Instant), Retry> {
        self.acquire(None).await
    }

    /// Takes over `lease` (free, expired, assigned to us, or holding our own last write) with a PUT guarded
    /// by its `resourceVersion`; a new term number (above any seen) and a new `acquireTime`, even when it
    /// already names us: the work restarts, so the fencing token must change.
    async fn take(&mut self, lease: ObservedLease) -> Result<(ObservedLease, Instant), Retry> {
        self.acquire(Some(&lease)).await
    }

    /// One acquire attempt: create (`guard` `None`) or an update guarded by the `resourceVersion` of
    /// `guard`. Bounded by `sent_at + renew_deadline`, and refused when the answer comes after it: a term
    /// whose deadline has passed never starts (the Lease, which may name us, is read again and taken with
    /// a new term).
    async fn acquire(
        &mut self,
        guard: Option<&ObservedLease>,
    ) -> Result<(ObservedLease, Instant), Retry> {
        // A coordinated Lease stays coordinated under its assigned holder.
        let strategy = guard
            .and_then(|lease| lease.record.strategy.clone())
            .filter(|_| self.coordinated());
        let desired = LeaderElectionRecord {
            strategy,
            ..self.desired(None, self.highest_term.map_or(0, |t| t.saturating_add(1)))
        };
        let sent_at = Instant::now();
        let valid_until = sent_at + self.config().renew_deadline;
        self.own.sending(&desired, self.config().lease_duration);
        let (verb, call) = match guard {
            None => ("create", self.lock.create(&desired)),
            Some(lease) => (
                "update",
                self.lock.update(&desired, &lease.resource_version),
            ),
        };
        let result = self
            .request_by(verb, Phase::Acquire, valid_until, call)
            .await;
        match &result {
            Ok(stored) => self.own.stored(&desired, &stored.record),
            Err(LockError::AlreadyExists | LockError::Conflict | LockError::NotFound) => {
                self.own.refused(&desired);
            }
            Err(_) => {}
        }
        if Instant::now() >= valid_until
            && let Ok(late) = &result
        {
            warn!(
                identity = %self.identity(),
                lease = %self.lock.describe(),
                term = late.record.lease_transitions,
                "the acquire was answered after its renew deadline (a slow API server or a frozen \
                 process); not starting that term"
            );
            self.stale = true;
            return Err(Retry::Later);
        }
        match result {
            Ok(lease) => {
                self.contention.won();
                Ok((lease, sent_at))
            }
            Err(LockError::NotFound) if guard.is_none() => {
                // A POST to the collection cannot miss the object it creates: the namespace or the
                // resource is missing (`KubeLeaseLock` reports kube-apiserver's NamespaceLifecycle 404 as
                // an API error already; another lock, or a proxy, may not). No race was lost: reading and
                // creating again at once would loop without a pause, so retry after a retry period.
                warn!(
                    identity = %self.identity(),
                    lease = %self.lock.describe(),
                    "creating the lease answered 404 Not Found (its namespace does not exist, or leases \
                     are not served there); retrying after a retry period"
                );
                self.stale = true;
                Err(Retry::Later)
            }
            Err(LockError::AlreadyExists | LockError::Conflict | LockError::NotFound) => {
                if matches!(self.watching, Watching::Open { .. }) {
                    // The winner's write (or the deletion) is on its way through our watch: wait for it
                    // instead of reading and re-watching, for at most a retry period.
                    debug!(identity = %self.identity(), "lost the race for the lease; waiting for the winner's write");
                    self.holdoff = Some(Holdoff {
                        version: guard.map(|l| l.resource_version.clone()),
                        record: guard.map(|l| l.record.clone()),
                        until: Instant::now() + self.jittered_retry_period(),
                        lost: true,
                    });
                } else {
                    self.contention.lost();
                    debug!(identity = %self.identity(), "lost the race for the lease; reading it again");
                    self.stale = true;
                }
                Err(Retry::Now)
            }
            Err(err) => {
                self.log_transient("acquiring the lease", &err);
                self.stale = true;
                Err(Retry::Later)
            }
        }
    }

    /// Waits until `until` (the observed holder's expiry), a change seen by the watch, or — when
    /// polling — a jittered retry period. `None` on shutdown.
    async fn wait(&mut self, until: Instant) -> Option<()> {
        if matches!(self.watching, Watching::Idle) && self.open_watch().await {
            // The Lease was found while opening the watch: decide on it first.
            return Some(());
        }
        let shutdown = self.shutdown.clone();
        match &mut self.watching {
            Watching::Open {
                events,
                opened_at,
                last_event,
            } => {
                let opened_at = *opened_at;
                // A held Lease changes every retry period while its holder renews. Silence for three of
                // them means the holder stopped (then a read keeps the expiry clock) or the watch died
                // (then a read finds the change and the watch is replaced): read to know which.
                let check_at = *last_event + 3 * self.inner.config.retry_period;
                let event = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return None,
                    () = sleep_until(until) => return Some(()),
                    event = events.get_mut().next() => event,
                    () = sleep_until(check_at) => {
                        *last_event = Instant::now();
                        self.stale = true;
                        return Some(());
                    }
                };
                *last_event = Instant::now();
                self.on_watch_event(event, opened_at).await
            }
            Watching::Idle | Watching::Polling => {
                let poll_at = Instant::now() + self.jittered_retry_period();
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return None,
                    () = sleep_until(until) => {}
                    () = sleep_until(poll_at) => self.stale = true,
                }
                Some(())
            }
        }
    }

    /// Opens the follower's watch from where it should resume. `true` when the Lease was found instead (a
    /// coordinated candidate listing for a missing Lease): decide on it before waiting.
    async fn open_watch(&mut self) -> bool {
        let from = match self.resume_from.clone() {
            Some(from) => Ok(from),
            // Under coordination a missing Lease is created by the election controller: watch for it from
            // the collection's version (a forbidden list is a forbidden watch, below).
            None if self.coordinated() => {
                match self.request("list", Phase::Watch, self.lock.list()).await {
                    Ok(ListedLease {
                        lease: Some(lease), ..
                    }) => {
                        self.observe(lease);
                        return true;
                    }
                    Ok(listed) => Ok(listed.resource_version),
                    Err(err) => Err(err),
                }
            }
            None => return false,
        };
        let opened = match from {
            Ok(from) => {
                self.request("watch", Phase::Watch, self.lock.watch(&from))
                    .await
            }
            Err(err) => Err(err),
        };
        match opened {
            Ok(events) => {
                self.watching = Watching::open(events);
            }
            Err(LockError::Forbidden(message)) => {
                warn!(
                    identity = %self.identity(),
                    lease = %self.lock.describe(),
                    %message,
                    "watching the lease is forbidden; polling every jittered retry period instead \
                     (grant list and watch on leases for instant takeover)"
                );
                self.watching = Watching::Polling;
            }
            // Handled as the one ERROR event with which kube-apiserver answers a version too old to
            // watch from.
            Err(LockError::Gone) => {
                let now = Instant::now();
                let gone = futures::stream::iter([Err(LockError::Gone)]).boxed();
                self.watching = Watching::Open {
                    events: SyncWrapper::new(gone),
                    opened_at: now,
                    last_event: now,
                };
            }
            Err(err) => self.log_transient("opening a watch", &err),
        }
        false
    }

    async fn on_watch_event(
        &mut self,
        event: Option<Result<LeaseEvent, LockError>>,
        opened_at: Instant,
    ) -> Option<()> {
        match event {
            Some(Ok(LeaseEvent::Applied(lease))) => self.observe(lease),
            Some(Ok(LeaseEvent::Deleted(rv))) => {
                self.seen = Seen::Missing;
                self.resume_from = Some(rv);
                self.publish_observed();
            }
            Some(Ok(LeaseEvent::Bookmark(rv))) => self.resume_from = Some(rv),
            Some(Err(LockError::Gone)) => self.resume_after_gone().await?,
            Some(Err(err)) => {
                self.log_transient("watching the lease", &err);
                self.watching = Watching::Idle;
                self.stale = true;
                self.pause().await?;
            }
            None => {
                self.watching = Watching::Idle;
                if opened_at.elapsed() < MIN_HEALTHY_WATCH {
                    self.stale = true;
                    self.pause().await?;
                }
            }
        }
        Some(())
    }

    /// After a 410 Gone: the version the watch resumes from is older than the server's watch history
    /// (kube-apiserver keeps about 75 s of it, and none from before its last restart), and reading the Lease
    /// gives back a version as old when nobody has written it since (a dead holder). So list it for the
    /// collection's current version and resume from that, as client-go's reflector relists after an expired
    /// watch (client-go `tools/cache/reflector.go`); an unchanged Lease keeps its expiry clock (`observe`).
    /// Then pause a jittered retry period, or until the holder's expiry if that is sooner, so that a server
    /// answering Gone again costs a few requests per retry period, not a hot loop. `None` on shutdown.
    async fn resume_after_gone(&mut self) -> Option<()> {
        self.watching = Watching::Idle;
        if !self.gone_logged {
            self.gone_logged = true;
            warn!(
                identity = %self.identity(),
                lease = %self.lock.describe(),
                "the lease's resourceVersion is too old to watch from (410 Gone: the API server keeps a \
                 short watch history, or restarted); resuming from a list's, after a retry period (logged \
                 once)"
            );
        }
        match self.request("list", Phase::Watch, self.lock.list()).await {
            Ok(listed) => {
                match listed.lease {
                    Some(lease) => self.observe(lease),
                    None => {
                        self.seen = Seen::Missing;
                        self.publish_observed();
                    }
                }
                self.resume_from = Some(listed.resource_version);
                self.stale = false;
            }
            Err(err) => {
                self.log_transient("listing the lease", &err);
                self.stale = true;
            }
        }
        let now = Instant::now();
        let resume_at = match self.decide(now) {
            Decision::Wait(expiry) => expiry.min(now + self.jittered_retry_period()),
            Decision::Create | Decision::Take(_) => return Some(()),
        };
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            () = sleep_until(resume_at) => Some(()),
        }
    }

    /// Sleeps a jittered retry period. `None` on shutdown.
    pub(super) async fn pause(&self) -> Option<()> {
        let period = self.jittered_retry_period();
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            () = tokio::time::sleep(period) => Some(()),
        }
    }

    /// client-go's `wait.Jitter(RetryPeriod, 1.2)`: uniform in `[RP, 2.2 x RP)`.
    pub(super) fn jittered_retry_period(&self) -> Duration {
        let rp = self.config().retry_period;
        rp + rp.mul_f64(rand::rng().random_range(0.0..JITTER_FACTOR))
    }
}
