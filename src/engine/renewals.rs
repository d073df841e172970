//! Taking renewals and watching terms: a storefront's paid renewal (idempotent on its
//! `renewal_ref`), an admin's renewal or cancellation of service (each with a reason, on the
//! timeline), and the sweep that brings servers nearing their expiry to the engine. The renewal
//! calls themselves are worked by the engine (`renew`).

use std::time::Duration;

use crate::clock::Timestamp;
use crate::domain::{EntryKind, OrderId, OrderState, Reason, Renewal, ServerTerm, TimelineEntry};
use crate::store::{Change, RenewalRequest, Store, StoreError};

use super::Engine;

/// Servers made due per sweep pass, at most: a fleet nearing its expiry together is brought in
/// over several passes, not in one burst.
pub const SWEEP_BATCH: usize = 500;

/// Why a renewal or a cancellation of service was refused.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    /// No such order (or, for a storefront, not one it sent).
    #[error("no such order")]
    NotFound,
    /// The reference names a renewal of another order.
    #[error("renewal_ref {0:?} already names a renewal of another order")]
    Conflict(String),
    /// The order has no live server to renew.
    #[error("the order is {0}: only a ready server can be renewed")]
    NotRenewable(OrderState),
    /// A field is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A renewal taken: the ledger row, and whether it was new (not a replay).
#[derive(Clone, Debug)]
pub struct Taken {
    /// The renewal.
    pub renewal: Renewal,
    /// `false` for a replay of a renewal already taken.
    pub created: bool,
}

impl Engine {
    /// Takes a storefront's paid renewal (see [`storefront_renewal`]) and wakes the worker.
    ///
    /// # Errors
    /// [`RenewalError`] naming why.
    pub async fn storefront_renewal(
        &self,
        id: &OrderId,
        renewal_ref: &str,
        storefront: &str,
    ) -> Result<Taken, RenewalError> {
        let taken =
            storefront_renewal(&*self.store, self.clock.now(), id, renewal_ref, storefront).await?;
        self.wake_if(&taken);
        Ok(taken)
    }

    /// An admin's renewal (see [`admin_renewal`]); wakes the worker.
    ///
    /// # Errors
    /// [`RenewalError`] naming why.
    pub async fn admin_renewal(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<Taken, RenewalError> {
        let taken = admin_renewal(&*self.store, self.clock.now(), id, actor, reason).await?;
        self.wake_if(&taken);
        Ok(taken)
    }

    /// Cancels an order's service (see [`cancel_service`]).
    ///
    /// # Errors
    /// [`RenewalError`] naming why.
    pub async fn cancel_service(
        &self,
        id: &OrderId,
        actor: &str,
        reason: &str,
    ) -> Result<(), RenewalError> {
        cancel_service(&*self.store, self.clock.now(), id, actor, reason).await
    }

    fn wake_if(&self, taken: &Taken) {
        if taken.created {
            self.wake();
        }
    }
}

/// Takes a storefront's paid renewal for order `id` (sent by `storefront`). A replay of the
/// same `renewal_ref` for the same order answers with the first renewal and renews nothing.
///
/// # Errors
/// [`RenewalError`] naming why.
pub async fn storefront_renewal(
    store: &dyn Store,
    now: Timestamp,
    id: &OrderId,
    renewal_ref: &str,
    storefront: &str,
) -> Result<Taken, RenewalError> {
    let renewal_ref = Renewal::parse_ref(renewal_ref).map_err(|e| RenewalError::Invalid {
        field: e.field,
        message: e.message,
    })?;
    let order = store.order(id).await?.ok_or(RenewalError::NotFound)?;
    if order.storefront.as_deref().is_some_and(|s| s != storefront) {
        return Err(RenewalError::NotFound);
    }
    let renewal = Renewal::new(
        id.clone(),
        renewal_ref.clone(),
        format!("storefront:{storefront}"),
        None,
        now,
    );
    let entry = TimelineEntry {
        at: now,
        kind: EntryKind::Progress,
        message: format!("💳 Renewal {renewal_ref} paid (storefront {storefront}): queued"),
    };
    take_renewal(store, &renewal, &entry).await
}

/// An admin renews order `id`'s server for a month, with a reason (on the timeline).
///
/// # Errors
/// [`RenewalError`] naming why; a missing reason is an invalid `reason`.
pub async fn admin_renewal(
    store: &dyn Store,
    now: Timestamp,
    id: &OrderId,
    actor: &str,
    reason: &str,
) -> Result<Taken, RenewalError> {
    let reason = check_reason(reason)?;
    let renewal_ref = format!("admin:{}", uuid::Uuid::now_v7());
    let renewal = Renewal::new(
        id.clone(),
        renewal_ref,
        format!("admin:{actor}"),
        Some(reason.to_string()),
        now,
    );
    let entry = TimelineEntry {
        at: now,
        kind: EntryKind::Admin,
        message: format!("🔄 Renewal asked for by {actor}: {reason}"),
    };
    take_renewal(store, &renewal, &entry).await
}

async fn take_renewal(
    store: &dyn Store,
    renewal: &Renewal,
    entry: &TimelineEntry,
) -> Result<Taken, RenewalError> {
    let taken = match store.request_renewal(renewal, entry).await? {
        RenewalRequest::Created(r) => Taken {
            renewal: r,
            created: true,
        },
        RenewalRequest::Existing(r) => Taken {
            renewal: r,
            created: false,
        },
        RenewalRequest::Conflict(r) => return Err(RenewalError::Conflict(r.renewal_ref)),
        RenewalRequest::NoOrder => return Err(RenewalError::NotFound),
        RenewalRequest::NotRenewable(state) => return Err(RenewalError::NotRenewable(state)),
    };
    Ok(taken)
}

/// Cancels order `id`'s service: it is not renewed any more and ends `terminated` at its
/// expiry. `actor` is `admin:<name>` or `storefront:<name>`.
///
/// # Errors
/// [`RenewalError`] naming why; [`StoreError::Conflict`] while a worker holds the order
/// (try again).
pub async fn cancel_service(
    store: &dyn Store,
    now: Timestamp,
    id: &OrderId,
    actor: &str,
    reason: &str,
) -> Result<(), RenewalError> {
    let reason = check_reason(reason)?;
    let order = store.order(id).await?.ok_or(RenewalError::NotFound)?;
    if order.state != OrderState::Ready {
        return Err(RenewalError::NotRenewable(order.state));
    }
    let mut term = store.server_term(id).await?.unwrap_or_default();
    if term.cancelled_at.is_some() {
        return Ok(());
    }
    term = ServerTerm {
        cancelled_at: Some(now),
        cancelled_by: Some(actor.to_string()),
        ..term
    };
    let mut next = order.clone();
    next.updated_at = now;
    let change = Change {
        term: Some(term),
        entries: vec![TimelineEntry {
            at: now,
            kind: EntryKind::Admin,
            message: format!(
                "🚫 Service cancelled by {actor}: {reason}. It is not renewed and ends at its expiry"
            ),
        }],
        ..Change::default()
    };
    store
        .admin_save(&next, order.updated_at, now, change)
        .await?;
    Ok(())
}

impl Engine {
    /// One pass of the term sweep: idle ready servers whose known expiry falls within
    /// `policy.renew.remind_before` and a sweep period are made due (at most [`SWEEP_BATCH`]),
    /// and the `provisioner_servers_expiring_soon` gauge is set. Returns how many were made due.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn sweep_terms_once(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let renew = &self.policy.server.renew;
        let soon = date(now.plus(renew.remind_before));
        let until = date(now.plus(renew.remind_before).plus(renew.sweep));
        let woken = self.store.wake_expiring(&until, now, SWEEP_BATCH).await?;
        let expiring = self.store.expiring(&soon, 10_000).await?;
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("provisioner_servers_expiring_soon").set(expiring.len() as f64);
        if woken > 0 {
            self.wake();
        }
        Ok(woken)
    }

    /// How often `run` sweeps: a tenth of `policy.renew.sweep`, at most an hour.
    pub(super) fn sweep_every(&self) -> Duration {
        (self.policy.server.renew.sweep / 10).min(Duration::from_secs(3600))
    }
}

/// `YYYY-MM-DD` of `t`, the form `ExpiryDate` takes.
pub(crate) fn date(t: Timestamp) -> String {
    t.to_string().chars().take(10).collect()
}

fn check_reason(reason: &str) -> Result<Reason, RenewalError> {
    Reason::parse(reason).map_err(|e| RenewalError::Invalid {
        field: "reason".into(),
        message: e.to_string(),
    })
}
