//! The read side: what the admin API, the dashboard, the customer endpoints and the operator CLI
//! show, read through one interface rather than each reaching into the store. Reads change
//! nothing, so they need neither a lease nor the provider; only [`Queries::credentials`] needs
//! the cipher, and a reader built without one says so.

use std::sync::Arc;

use crate::clock::Timestamp;
use crate::crypto::{Cipher, token_matches_hash};
use crate::domain::{
    CatalogPackage, Credentials, Discovered, FieldError, Order, OrderId, OrderState, PackageId,
    Phase, Purchase, TimelineEntry,
};
use crate::store::{OrderFilter, StateCounts, Store, StoreError};

/// The largest page of the order list.
pub const MAX_PAGE_SIZE: usize = 500;
/// The largest offset into the order list (far past any real list, short of overflow).
pub const MAX_OFFSET: usize = 1_000_000_000;

/// An order-list request as an operator gives it: the admin API's query string, the dashboard's
/// filter form and `provisioner orders list`'s flags all come to this, each already in its own
/// types; [`ListRequest::filter`] checks it once for all of them. Empty text counts as absent,
/// as an HTML form sends it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListRequest<'a> {
    /// Only orders in this state (its name, such as `failed`).
    pub state: Option<&'a str>,
    /// Only orders of this package.
    pub package: Option<PackageId>,
    /// Created at or after this time (see [`parse_time`]).
    pub from: Option<&'a str>,
    /// Created before this time (see [`parse_time`]).
    pub to: Option<&'a str>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`].
    pub limit: Option<usize>,
    /// Rows to skip, up to [`MAX_OFFSET`].
    pub offset: Option<usize>,
    /// Search text (see [`OrderFilter::search`]).
    pub query: Option<&'a str>,
}

impl ListRequest<'_> {
    /// The store's filter for this request.
    ///
    /// # Errors
    /// The first bad field, named.
    pub fn filter(&self) -> Result<OrderFilter, FieldError> {
        let state = text(self.state)
            .map(|s| {
                s.parse::<OrderState>()
                    .map_err(|e| FieldError::new("state", e))
            })
            .transpose()?;
        let limit = at_most("limit", self.limit, MAX_PAGE_SIZE)?;
        if limit == Some(0) {
            return Err(FieldError::new("limit", "must be at least 1"));
        }
        Ok(OrderFilter {
            state,
            package: self.package,
            created_from: text(self.from).map(|t| parse_time("from", t)).transpose()?,
            created_to: text(self.to).map(|t| parse_time("to", t)).transpose()?,
            limit,
            offset: at_most("offset", self.offset, MAX_OFFSET)?,
            search: text(self.query).map(str::to_string),
            ..OrderFilter::default()
        })
    }
}

fn text(t: Option<&str>) -> Option<&str> {
    t.map(str::trim).filter(|t| !t.is_empty())
}

fn at_most(field: &str, n: Option<usize>, max: usize) -> Result<Option<usize>, FieldError> {
    match n {
        Some(n) if n > max => Err(not_a_count(field, max)),
        n => Ok(n),
    }
}

/// The longest search text: an order_ref, an email or an address, not a document.
pub const MAX_SEARCH_CHARS: usize = 200;

/// A search an operator typed (an order_ref, a customer email, an address, an order id or its
/// short form), for [`OrderFilter::search`]: trimmed; empty counts as absent.
///
/// # Errors
/// Text longer than [`MAX_SEARCH_CHARS`] or holding control characters, on `field`.
pub fn parse_search(field: &str, text: Option<&str>) -> Result<Option<String>, FieldError> {
    let Some(t) = self::text(text) else {
        return Ok(None);
    };
    if t.chars().count() > MAX_SEARCH_CHARS {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_SEARCH_CHARS} characters"),
        ));
    }
    if t.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(Some(t.to_string()))
}

/// A phase an operator named (`buy` or `credentials`); empty counts as absent.
///
/// # Errors
/// Any other name, on `field`.
pub fn parse_phase(field: &str, text: Option<&str>) -> Result<Option<Phase>, FieldError> {
    self::text(text)
        .map(|t| {
            t.parse::<Phase>().map_err(|_| {
                FieldError::new(field, format!("must be buy or credentials; got {t:?}"))
            })
        })
        .transpose()
}

/// The error of a count field that is not a whole number up to `max`, for callers that parse
/// the number from text before building a [`ListRequest`].
pub fn not_a_count(field: &str, max: usize) -> FieldError {
    FieldError::new(field, format!("must be a whole number up to {max}"))
}

/// The error of a package field that is not a PID, for callers that parse it from text.
pub fn not_a_package(field: &str) -> FieldError {
    FieldError::new(field, "must be a package id (PID)")
}

/// A time an operator typed: RFC 3339 (`2026-05-01T10:00:00Z`; the `Z`, the seconds or the whole
/// time of day may be left out) or milliseconds since the epoch.
///
/// # Errors
/// When `text` is neither, on `field`.
pub fn parse_time(field: &str, text: &str) -> Result<Timestamp, FieldError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map(Timestamp)
            .map_err(|_| FieldError::new(field, "milliseconds out of range"));
    }
    // `datetime-local` inputs send `2026-05-01T10:00`; a date input sends `2026-05-01`.
    let full = match text.len() {
        10 => format!("{text}T00:00:00"),
        16 => format!("{text}:00"),
        _ => text.to_string(),
    };
    let t = humantime::parse_rfc3339_weak(&full).map_err(|_| {
        FieldError::new(
            field,
            "must be an RFC 3339 time such as 2026-05-01T10:00:00Z, or milliseconds since the epoch",
        )
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| FieldError::new(field, "must be after 1970"))?
        .as_millis();
    Ok(Timestamp(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// Reads of orders, their history and the catalog.
#[derive(Clone)]
pub struct Queries {
    /// Where everything shown is read from.
    store: Arc<dyn Store>,
    /// Opens stored credentials; `None` for readers that never show them (the operator CLI on
    /// the database), so no key has to be made up for them.
    cipher: Option<Arc<Cipher>>,
}

/// One order with its history: the admin's detail view.
#[derive(Clone, Debug)]
pub struct OrderDetail {
    /// The order as it is now.
    pub order: Order,
    /// Its timeline, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// Its purchase ledger, oldest first.
    pub purchases: Vec<Purchase>,
}

/// One page of the order list, with the counts per state over all orders (the list's header).
#[derive(Clone, Debug)]
pub struct OrderPage {
    /// The page's orders, newest first.
    pub orders: Vec<Order>,
    /// Orders per state, whatever the filter.
    pub counts: StateCounts,
    /// The page size the filter came to.
    pub limit: usize,
    /// Rows skipped before this page.
    pub offset: usize,
    /// Where the next page starts, when this one is full (there may be more).
    pub next_offset: Option<usize>,
}

/// The shortest id suffix looked up as a short id: shorter ones match too many orders to mean
/// one.
pub const MIN_SHORT_ID: usize = 6;

/// What an operator's name for an order (a UUID, an order_ref or a short id) came to.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// Exactly this order.
    Found(Box<Order>),
    /// No order is known by that name.
    NotFound,
    /// A short id that ends several orders' ids: these (up to five).
    Ambiguous(Vec<Order>),
}

/// Why an order's credentials cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The order is not ready, so it has no credentials yet.
    #[error("order is {0}: credentials exist once it is ready")]
    NotReady(OrderState),
    /// A ready order without stored credentials: the store lost them.
    #[error("ready order {0} has no stored credentials")]
    Missing(OrderId),
    /// The stored credentials do not open with this key.
    #[error("order {0}: {1}")]
    Unreadable(OrderId, String),
    /// This reader was built without the credentials key.
    #[error("credentials cannot be read here: no credentials key was configured for this reader")]
    NoKey,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Queries {
    /// Reads on `store`, without the credentials key.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cipher: None,
        }
    }

    /// The same reads, able to open stored credentials with `cipher`.
    #[must_use]
    pub fn with_cipher(mut self, cipher: Arc<Cipher>) -> Self {
        self.cipher = Some(cipher);
        self
    }

    /// One order.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn order(&self, id: &OrderId) -> Result<Option<Order>, StoreError> {
        self.store.order(id).await
    }

    /// An order's timeline, oldest first.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn timeline(&self, id: &OrderId) -> Result<Vec<TimelineEntry>, StoreError> {
        self.store.timeline(id).await
    }

    /// An order's purchase ledger, oldest first.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn purchases(&self, id: &OrderId) -> Result<Vec<Purchase>, StoreError> {
        self.store.purchases(id).await
    }

    /// The servers a discovery scan listed as candidates for an order needing attention.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn candidates(&self, id: &OrderId) -> Result<Vec<Discovered>, StoreError> {
        self.store.candidates(id).await
    }

    /// The actions on an order's server, oldest first.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn actions(
        &self,
        id: &OrderId,
    ) -> Result<Vec<crate::domain::ServerAction>, StoreError> {
        self.store.actions(id).await
    }

    /// What status last said about an order's server.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn server_facts(
        &self,
        id: &OrderId,
    ) -> Result<Option<crate::domain::ServerFacts>, StoreError> {
        self.store.server_facts(id).await
    }

    /// The order a storefront knows by `order_ref`.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn order_by_ref(
        &self,
        order_ref: &crate::domain::OrderRef,
    ) -> Result<Option<Order>, StoreError> {
        self.store.order_by_ref(order_ref).await
    }

    /// The order an operator means by `name`: its id (UUID), its order_ref, or the end of its id
    /// (the dashboard's short id, at least [`MIN_SHORT_ID`] characters), tried in that order.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn find_order(&self, name: &str) -> Result<Lookup, StoreError> {
        let name = name.trim();
        if let Ok(id) = OrderId::parse(name) {
            return Ok(self
                .store
                .order(&id)
                .await?
                .map_or(Lookup::NotFound, |o| Lookup::Found(Box::new(o))));
        }
        if let Ok(order_ref) = crate::domain::OrderRef::parse(name)
            && let Some(o) = self.store.order_by_ref(&order_ref).await?
        {
            return Ok(Lookup::Found(Box::new(o)));
        }
        let hexish = name.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if name.len() < MIN_SHORT_ID || !hexish {
            return Ok(Lookup::NotFound);
        }
        let mut found = self
            .store
            .orders(&OrderFilter {
                id_suffix: Some(name.to_string()),
                limit: Some(5),
                ..OrderFilter::default()
            })
            .await?;
        Ok(match found.len() {
            0 => Lookup::NotFound,
            1 => Lookup::Found(Box::new(found.remove(0))),
            _ => Lookup::Ambiguous(found),
        })
    }

    /// An order's deliveries (its Notifications list), oldest first.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn deliveries(
        &self,
        id: &OrderId,
    ) -> Result<Vec<crate::store::DeliveryStatus>, StoreError> {
        self.store.deliveries(id).await
    }

    /// The `ExpiryDate` status last gave an order's server, if any.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn expiry(&self, id: &OrderId) -> Result<Option<String>, StoreError> {
        Ok(self.store.server_facts(id).await?.and_then(|f| f.expiry))
    }

    /// An order's renewals, oldest first.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn renewals(&self, id: &OrderId) -> Result<Vec<crate::domain::Renewal>, StoreError> {
        self.store.renewals(id).await
    }

    /// Ready servers whose last known expiry is on or before `until` (`YYYY-MM-DD`), soonest
    /// first, at most `limit`.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn expiring(
        &self,
        until: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::Expiring>, StoreError> {
        self.store.expiring(until, limit).await
    }

    /// One order with its timeline and ledger; `None` when there is no such order.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn order_detail(&self, id: &OrderId) -> Result<Option<OrderDetail>, StoreError> {
        let Some(order) = self.store.order(id).await? else {
            return Ok(None);
        };
        Ok(Some(OrderDetail {
            order,
            timeline: self.store.timeline(id).await?,
            purchases: self.store.purchases(id).await?,
        }))
    }

    /// Orders matching `filter`, newest first.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn orders(&self, filter: &OrderFilter) -> Result<Vec<Order>, StoreError> {
        self.store.orders(filter).await
    }

    /// How many orders are in each state.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        self.store.state_counts().await
    }

    /// One page of orders matching `filter`, with the counts per state and where the next page
    /// starts.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn order_page(&self, filter: &OrderFilter) -> Result<OrderPage, StoreError> {
        let orders = self.store.orders(filter).await?;
        let counts = self.store.state_counts().await?;
        let limit = filter.page_size();
        let offset = filter.offset.unwrap_or(0);
        let next_offset = (orders.len() == limit).then_some(offset + limit);
        Ok(OrderPage {
            orders,
            counts,
            limit,
            offset,
            next_offset,
        })
    }

    /// The order `id`, when `token` is its current customer access token; `None` for an unknown
    /// order and a wrong token alike, so callers cannot tell the two apart by accident.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn customer_order(
        &self,
        id: &OrderId,
        token: &str,
    ) -> Result<Option<Order>, StoreError> {
        let Some(stored) = self.store.access_token(id).await? else {
            return Ok(None);
        };
        if !token_matches_hash(token, &stored.hash) {
            return Ok(None);
        }
        self.store.order(id).await
    }

    /// A ready order's server login, decrypted.
    ///
    /// # Errors
    /// [`CredentialsError`] naming why.
    pub async fn credentials(&self, order: &Order) -> Result<Credentials, CredentialsError> {
        let (OrderState::Ready, Some(ip)) = (order.state, order.server_ip) else {
            return Err(CredentialsError::NotReady(order.state));
        };
        let cipher = self.cipher.as_ref().ok_or(CredentialsError::NoKey)?;
        let sealed = self
            .store
            .credentials(&order.id)
            .await?
            .ok_or_else(|| CredentialsError::Missing(order.id.clone()))?;
        cipher
            .open(ip, &sealed)
            .map_err(|e| CredentialsError::Unreadable(order.id.clone(), e.to_string()))
    }

    /// The package catalog as last synced, ordered by PID.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn catalog(&self) -> Result<Vec<CatalogPackage>, StoreError> {
        self.store.catalog().await
    }

    /// How far past its due time the most overdue active order is at `now` (zero when none is
    /// late): an order's due time is its `run_at`, or its lease's expiry while a worker holds it.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn oldest_overdue(&self, now: Timestamp) -> Result<std::time::Duration, StoreError> {
        Ok(self
            .store
            .next_due()
            .await?
            .filter(|due| *due < now)
            .map_or(std::time::Duration::ZERO, |due| now.since(due)))
    }

    /// Work waiting in the notice outbox.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        self.store.outbox_backlog().await
    }
}
