//! The JSON shapes of the Sales API (docs/design.md "Request and response shapes"), with their conversions.

use chrono::{DateTime, Utc};
use orderflow_domain::{
    Address, Currency, CustomerId, EmailAddress, InvalidValue, Money, Order, OrderRequest, OrderStatus, Quantity,
    RawAddress, Sku,
};
use orderflow_ports::sales::Product;
use orderflow_runtime::http::{IdCursor, Pattern, Problem, Shape, Text, trimmed, with_pattern};
use orderflow_runtime::page;
use poem_openapi::registry::MetaSchema;
use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A SKU, documented with the rule [`Sku::parse`] applies.
pub type SkuText = Pattern<SkuShape>;

/// The [`Shape`] of a SKU.
pub enum SkuShape {}

impl Shape for SkuShape {
    fn schema() -> MetaSchema {
        with_pattern(Sku::PATTERN.to_owned())
    }
}

/// An `Idempotency-Key` header, as [`orderflow_domain::IdempotencyKey::parse`] accepts it.
pub enum IdempotencyKeyShape {}

impl Shape for IdempotencyKeyShape {
    fn schema() -> MetaSchema {
        with_pattern("^[!-~]{1,255}$".to_owned())
    }
}

/// A country code, which the domain trims first.
pub enum CountryShape {}

impl Shape for CountryShape {
    fn schema() -> MetaSchema {
        with_pattern(trimmed("[A-Z]{2}"))
    }
}

/// An e-mail address, as [`EmailAddress::parse`] accepts it.
pub enum EmailShape {}

impl Shape for EmailShape {
    fn schema() -> MetaSchema {
        let mut schema = with_pattern(EmailAddress::PATTERN.to_owned());
        schema.max_length = Some(EmailAddress::MAX_LEN);
        schema
    }
}

/// Money in minor units of a currency.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoneyDto {
    /// Amount in minor units (cents).
    #[oai(validator(minimum(value = "0"), maximum(value = "10000000000000")))]
    pub amount_minor: i64,
    /// ISO 4217 code.
    #[oai(validator(pattern = "^[A-Z]{3}$"))]
    pub currency: String,
}

impl From<Money> for MoneyDto {
    fn from(m: Money) -> Self {
        Self { amount_minor: m.amount_minor, currency: m.currency.to_string() }
    }
}

impl MoneyDto {
    /// Validates into [`Money`].
    pub fn parse(&self) -> Result<Money, InvalidValue> {
        Money::new(self.amount_minor, Currency::parse(&self.currency)?)
    }
}

/// A shipping address.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressDto {
    /// Recipient.
    pub name: Text<200>,
    /// Street and number.
    pub line1: Text<200>,
    /// Optional second line; blank means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none, nullable)]
    pub line2: Option<Text<200, true>>,
    /// City.
    pub city: Text<100>,
    /// Postal code.
    pub postal_code: Text<20>,
    /// ISO 3166-1 alpha-2 country code.
    pub country: Pattern<CountryShape>,
}

impl From<Address> for AddressDto {
    fn from(a: Address) -> Self {
        Self {
            name: a.name.into(),
            line1: a.line1.into(),
            line2: a.line2.map(Into::into),
            city: a.city.into(),
            postal_code: a.postal_code.into(),
            country: a.country.as_str().to_owned().into(),
        }
    }
}

/// One requested line.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    /// The product.
    pub sku: SkuText,
    /// How many (1–10,000).
    #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
    pub quantity: i64,
}

/// `POST /orders` body. Prices come from the catalogue, never from the client; unknown fields are refused.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// Who orders.
    pub customer_id: Text<64>,
    /// 1–100 lines, each SKU once.
    #[oai(validator(min_items = 1, max_items = 100))]
    pub lines: Vec<LineRequest>,
    /// Where to ship.
    pub shipping_address: AddressDto,
    /// Whom to e-mail when the order is paid, fails, is cancelled, ships or arrives; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none, nullable)]
    pub contact_email: Option<Pattern<EmailShape>>,
}

impl PlaceOrderRequest {
    /// Validates the request, naming the field at fault.
    pub fn parse(&self) -> Result<OrderRequest, Problem> {
        let invalid = |e: InvalidValue| Problem::invalid(e.field, e.reason);
        let customer_id = CustomerId::parse(self.customer_id.as_str()).map_err(invalid)?;
        if self.lines.len() > OrderRequest::MAX_LINES {
            return Err(Problem::invalid("lines", format!("must contain at most {} lines", OrderRequest::MAX_LINES)));
        }
        let lines = self
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let at = format!("lines[{i}]");
                Ok((
                    Sku::parse(l.sku.as_str()).map_err(|e| e.within(&at))?,
                    Quantity::new(l.quantity).map_err(|e| e.within(&at))?,
                ))
            })
            .collect::<Result<Vec<_>, InvalidValue>>()
            .map_err(invalid)?;
        let a = &self.shipping_address;
        let address = Address::parse(RawAddress {
            name: a.name.as_str(),
            line1: a.line1.as_str(),
            line2: a.line2.as_ref().map(Text::as_str),
            city: a.city.as_str(),
            postal_code: a.postal_code.as_str(),
            country: a.country.as_str(),
        })
        .map_err(|e| invalid(e.within("shipping_address")))?;
        let contact_email =
            self.contact_email.as_ref().map(|e| EmailAddress::parse(e.as_str())).transpose().map_err(invalid)?;
        Ok(OrderRequest::new(customer_id, lines, address).map_err(invalid)?.with_contact_email(contact_email))
    }
}

/// Where an order is in its lifecycle.
#[derive(Debug, Clone, Copy, Enum, Serialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum OrderStatusDto {
    PendingPayment,
    PendingShipment,
    PaymentFailed,
    CancellationRequested,
    Cancelled,
    Shipped,
    Delivered,
}

impl From<OrderStatusDto> for OrderStatus {
    fn from(s: OrderStatusDto) -> Self {
        match s {
            OrderStatusDto::PendingPayment => Self::PendingPayment,
            OrderStatusDto::PendingShipment => Self::PendingShipment,
            OrderStatusDto::PaymentFailed => Self::PaymentFailed,
            OrderStatusDto::CancellationRequested => Self::CancellationRequested,
            OrderStatusDto::Cancelled => Self::Cancelled,
            OrderStatusDto::Shipped => Self::Shipped,
            OrderStatusDto::Delivered => Self::Delivered,
        }
    }
}

impl From<OrderStatus> for OrderStatusDto {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::PendingPayment => Self::PendingPayment,
            OrderStatus::PendingShipment => Self::PendingShipment,
            OrderStatus::PaymentFailed => Self::PaymentFailed,
            OrderStatus::CancellationRequested => Self::CancellationRequested,
            OrderStatus::Cancelled => Self::Cancelled,
            OrderStatus::Shipped => Self::Shipped,
            OrderStatus::Delivered => Self::Delivered,
        }
    }
}

/// A priced order line.
#[derive(Debug, Clone, Object, Serialize)]
pub struct OrderLineDto {
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// Catalogue price of one unit when the order was placed.
    pub unit_price: MoneyDto,
}

/// An order.
#[derive(Debug, Clone, Object, Serialize)]
pub struct OrderDto {
    /// Order id (UUIDv7).
    pub id: Uuid,
    /// Who placed it.
    pub customer_id: String,
    /// Lifecycle status.
    pub status: OrderStatusDto,
    /// What was ordered.
    pub lines: Vec<OrderLineDto>,
    /// Sum of the lines.
    pub total: MoneyDto,
    /// Where it goes.
    pub shipping_address: AddressDto,
    /// Whom its notifications go to, when the client gave an address.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub contact_email: Option<String>,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When its status last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Order> for OrderDto {
    fn from(order: Order) -> Self {
        // Every field named: one added to the order cannot be left out of the API unnoticed.
        let Order {
            id,
            customer_id,
            status,
            lines,
            total,
            shipping_address,
            contact_email,
            created_at,
            updated_at,
            version: _,
        } = order;
        Self {
            id: id.as_uuid(),
            customer_id: customer_id.to_string(),
            status: status.into(),
            lines: lines
                .into_iter()
                .map(|l| OrderLineDto {
                    sku: l.sku.to_string(),
                    quantity: l.quantity.get(),
                    unit_price: l.unit_price.into(),
                })
                .collect(),
            total: total.into(),
            shipping_address: shipping_address.into(),
            contact_email: contact_email.map(String::from),
            created_at,
            updated_at,
        }
    }
}

page!(
    /// A page of orders.
    OrderList {
        /// The orders, newest first.
        items: OrderDto,
        next_cursor: IdCursor,
    }
);

/// One entry of an order's timeline.
#[derive(Debug, Clone, Object)]
pub struct TimelineEntry {
    /// The event type, e.g. `orderflow.order.paid.v1`.
    #[oai(rename = "type")]
    pub event_type: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Its payload.
    pub data: serde_json::Value,
}

/// An order's lifecycle, oldest first.
#[derive(Debug, Clone, Object)]
pub struct Timeline {
    /// The events.
    pub items: Vec<TimelineEntry>,
}

/// `PUT /products/{sku}` body.
#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutProductRequest {
    /// Display name.
    pub name: Text<200>,
    /// Unit price.
    pub price: MoneyDto,
    /// Units on hand.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000")))]
    pub stock: i64,
}

/// A product with its stock.
#[derive(Debug, Clone, Object)]
pub struct ProductDto {
    /// The SKU.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Unit price.
    pub price: MoneyDto,
    /// Units on hand.
    pub stock: u32,
    /// Units held by open orders.
    pub reserved: u32,
}

impl From<Product> for ProductDto {
    fn from(p: Product) -> Self {
        Self {
            sku: p.sku.to_string(),
            name: p.name.to_string(),
            price: p.price.into(),
            stock: p.stock,
            reserved: p.reserved,
        }
    }
}

page!(
    /// A page of products.
    ProductList {
        /// The products in SKU order.
        items: ProductDto,
        next_cursor: SkuText,
    }
);
