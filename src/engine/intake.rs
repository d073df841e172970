//! Intake, the storefront's use case: a paid order in, its customer access token out. And the
//! token's explicit rotation, the only way a token an order's customer holds stops working.
//!
//! Every successful answer for an order carries the same working token, first or replayed,
//! racing or not: the token is derived from the order id and its rotation generation
//! ([`crate::crypto::Cipher::access_token`]), so a replay hands out the token the customer
//! already holds instead of replacing it. The order and its token digest are written in one
//! transaction ([`Engine::accept`]).

use secrecy::{ExposeSecret, SecretString};

use super::Engine;
use super::catalog::{Catalog, CatalogError, PackageCheck};
use crate::crypto::token_hash_hex;
use crate::domain::{EntryKind, NewOrder, Order, OrderId, Reason, ReasonError, TimelineEntry};
use crate::store::{AccessToken, Intake, StoreError};

/// Why an order was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The reference already names an order with different contents.
    #[error("order_ref {order_ref:?} already names order {order_id} with different contents")]
    Conflict {
        /// The reference.
        order_ref: String,
        /// The order it names.
        order_id: OrderId,
    },
    /// The reference names an order another storefront sent: its token is not this
    /// storefront's to receive.
    #[error("order_ref {order_ref:?} already names an order sent by another storefront")]
    OtherStorefront {
        /// The reference.
        order_ref: String,
    },
    /// The package cannot be bought: unknown or inactive. The text says which packages are sold.
    #[error("{0}")]
    Package(String),
    /// The catalog was never synced and SmartVPS's stock list cannot be read now.
    #[error(
        "the package catalog was never synced and SmartVPS's stock list cannot be read now ({0}); retry later"
    )]
    CatalogUnavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An order taken in (or found again), with the customer's token.
#[derive(Debug)]
pub struct Taken {
    /// The order as stored.
    pub order: Order,
    /// Whether this request created it (201) or replayed it (200).
    pub created: bool,
    /// The customer's access token. `None` only for an order whose stored token cannot be
    /// derived again (issued at random before tokens were derived, or under another secret
    /// key): handing out a fresh one would revoke the customer's, so it takes an explicit
    /// rotation.
    pub token: Option<SecretString>,
}

/// Takes a paid order from `storefront` (`new.storefront` is set to it): idempotent on the
/// order reference, with the package checked against the catalog.
///
/// A replay is answered before the catalog is consulted: the order was accepted when it was
/// posted first, and a webhook retried after its package sold out must still get its order back.
///
/// # Errors
/// See [`IntakeError`].
pub async fn take(
    engine: &Engine,
    catalog: &Catalog,
    mut new: NewOrder,
    storefront: &str,
) -> Result<Taken, IntakeError> {
    new.storefront = Some(storefront.to_string());
    if let Some(existing) = engine.store.order_by_ref(&new.order_ref).await? {
        return replayed(engine, existing, &new).await;
    }
    check_package(catalog, &new).await?;
    match engine.accept(new.clone()).await? {
        Intake::Created(order) => {
            let (token, _) = engine.access_token(&order.id, 0);
            Ok(Taken {
                order,
                created: true,
                token: Some(token),
            })
        }
        // Another request with this reference won the race since the lookup above.
        Intake::Existing(order) | Intake::Conflict(order) => replayed(engine, order, &new).await,
    }
}

async fn check_package(catalog: &Catalog, new: &NewOrder) -> Result<(), IntakeError> {
    match catalog.check(new.package_id).await {
        Ok(PackageCheck::Sellable(_)) => Ok(()),
        Ok(PackageCheck::Inactive(p)) => Err(IntakeError::Package(format!(
            "package {} ({}) is not active at SmartVPS: it cannot be bought now",
            p.id, p.name
        ))),
        Ok(PackageCheck::Unknown { sold }) => {
            let sold: Vec<String> = sold.iter().map(ToString::to_string).collect();
            Err(IntakeError::Package(format!(
                "unknown package {}; packages sold now: {}",
                new.package_id,
                if sold.is_empty() {
                    "none".to_string()
                } else {
                    sold.join(", ")
                }
            )))
        }
        // The storefront gets the plain words, not the transport detail.
        Err(CatalogError::Unavailable(why)) => Err(IntakeError::CatalogUnavailable(
            crate::provider::health::split_detail(&why).0,
        )),
        Err(CatalogError::Store(e)) => Err(IntakeError::Store(e)),
    }
}

/// The answer to a reference seen before: the same order with the token its customer holds, or
/// a refusal that hands out nothing.
async fn replayed(engine: &Engine, existing: Order, new: &NewOrder) -> Result<Taken, IntakeError> {
    if existing.storefront.is_some() && existing.storefront != new.storefront {
        return Err(IntakeError::OtherStorefront {
            order_ref: existing.order_ref.as_str().to_string(),
        });
    }
    if existing.fingerprint != new.fingerprint() {
        return Err(IntakeError::Conflict {
            order_ref: existing.order_ref.as_str().to_string(),
            order_id: existing.id,
        });
    }
    let token = current_token(engine, &existing.id).await?;
    Ok(Taken {
        order: existing,
        created: false,
        token,
    })
}

/// The token the order's customer holds now, derived again; `None` when the stored digest is
/// not of a derivable token.
async fn current_token(engine: &Engine, id: &OrderId) -> Result<Option<SecretString>, StoreError> {
    let Some(AccessToken {
        hash,
        generation: Some(generation),
    }) = engine.store.access_token(id).await?
    else {
        return Ok(None);
    };
    let (token, access) = engine.access_token(id, generation);
    if access.hash == hash {
        Ok(Some(token))
    } else {
        tracing::warn!(
            order_id = %id,
            "the order's access token was issued under another PROVISIONER_SECRET_KEY: a replay cannot hand it out; \
             rotate it to issue a new one"
        );
        Ok(None)
    }
}

/// Who rotates a token.
#[derive(Clone, Debug)]
pub enum Rotator {
    /// An admin, by token name.
    Admin(String),
    /// A storefront, by configured name.
    Storefront(String),
}

/// Why a rotation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// No such order (or, for a storefront, not one it sent).
    #[error("no order {0}")]
    NotFound(OrderId),
    /// The reason is missing.
    #[error("a reason is required: say why the customer's token is being replaced")]
    NoReason,
    /// The reason is too long or holds control characters.
    #[error("{0}")]
    BadReason(ReasonError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Replaces the order's customer access token with the next generation's, on the record (who
/// and why in the timeline). The previous token stops working at once. Returns the new token:
/// the caller decides who may see it (only a storefront receives customer tokens).
///
/// # Errors
/// See [`RotateError`].
pub async fn rotate(
    engine: &Engine,
    id: &OrderId,
    by: &Rotator,
    reason: &str,
) -> Result<SecretString, RotateError> {
    let reason = Reason::parse(reason).map_err(|e| match e {
        ReasonError::Empty => RotateError::NoReason,
        e => RotateError::BadReason(e),
    })?;
    let order = engine
        .store
        .order(id)
        .await?
        .ok_or_else(|| RotateError::NotFound(id.clone()))?;
    if let Rotator::Storefront(name) = by
        && order.storefront.as_deref() != Some(name.as_str())
    {
        // Not this storefront's order: answered as if it did not exist, so a storefront cannot
        // learn which ids are real.
        return Err(RotateError::NotFound(id.clone()));
    }
    let current = engine.store.access_token(id).await?;
    let next_generation = current
        .and_then(|a| a.generation)
        .map_or(1, |g| g.saturating_add(1));
    let (token, access) = engine.access_token(id, next_generation);
    let who = match by {
        Rotator::Admin(name) => format!("admin {name}"),
        Rotator::Storefront(name) => format!("storefront {name}"),
    };
    let entry = TimelineEntry {
        at: engine.clock.now(),
        kind: EntryKind::Admin,
        message: format!(
            "🔑 Customer access token rotated by {who}: {reason}. The previous token no longer works; the storefront \
             receives the new one."
        ),
    };
    engine
        .store
        .rotate_access_token(id, &access, &entry)
        .await?;
    tracing::info!(order_id = %id, by = %who, generation = next_generation, "customer access token rotated");
    debug_assert_eq!(access.hash, token_hash_hex(token.expose_secret()));
    Ok(token)
}
