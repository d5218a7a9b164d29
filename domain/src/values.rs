//! Validated value types: once parsed, an invalid SKU, quantity, amount or address cannot exist.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A point in time, always UTC. The domain never reads the clock: callers pass it in.
pub type Timestamp = DateTime<Utc>;

/// Why a raw value was refused; `field` names the offending input so an API can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    /// Dotted path of the field at fault, e.g. `lines[2].quantity`.
    pub field: String,
    /// What is wrong with it, in words a client can act on.
    pub reason: String,
}

impl InvalidValue {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }

    /// Re-roots the error under a parent field (`sku` becomes `lines[3].sku`).
    #[must_use]
    pub fn within(self, parent: &str) -> Self {
        Self { field: format!("{parent}.{}", self.field), ..self }
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an id produced by the id generator or read back from storage.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identifies an order (a UUIDv7, so ids sort by creation time).
    OrderId
);
uuid_id!(
    /// Identifies a shipment.
    ShipmentId
);
uuid_id!(
    /// Identifies one event; doubles as the message id for de-duplication.
    EventId
);

fn check_text(field: &str, raw: &str, max: usize) -> Result<String, InvalidValue> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(InvalidValue::new(field, "must not be empty"));
    }
    if trimmed.chars().count() > max {
        return Err(InvalidValue::new(field, format!("must be at most {max} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(InvalidValue::new(field, "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Trims and validates `raw`.
            ///
            /// # Errors
            /// [`InvalidValue`] when it is empty, longer than the limit or holds control characters.
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                check_text($field, raw, $max).map(Self)
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "minLength": 1, "maxLength": $max })
            }
        }
    };
}

/// A JSON Schema for a value type serialised as a constrained primitive.
macro_rules! schema {
    ($name:ident, $schema:tt) => {
        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}

schema!(Sku, { "type": "string", "pattern": Sku::PATTERN });
schema!(Quantity, { "type": "integer", "minimum": 1, "maximum": 10000 });
schema!(Currency, { "type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217 code" });
schema!(CountryCode, { "type": "string", "pattern": "^[A-Z]{2}$", "description": "ISO 3166-1 alpha-2 code" });

text_value!(
    /// The customer an order belongs to, as the sales client names them.
    CustomerId, "customer_id", 64
);
text_value!(
    /// A carrier's name, e.g. `DHL`.
    Carrier, "carrier", 64
);
text_value!(
    /// The carrier's tracking number for a parcel.
    TrackingNumber, "tracking_number", 64
);
text_value!(
    /// A product's display name.
    ProductName, "name", 200
);

/// A client's `Idempotency-Key`: 1–255 printable ASCII characters naming one request it may send again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates `raw` as it arrived (no trimming: the key is compared byte for byte).
    ///
    /// # Errors
    /// [`InvalidValue`] for field `Idempotency-Key` when it is empty, longer than 255 characters or not
    /// printable ASCII.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const FIELD: &str = "Idempotency-Key";
        if raw.is_empty() || raw.len() > 255 {
            return Err(InvalidValue::new(FIELD, "must be 1-255 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidValue::new(FIELD, "must be printable ASCII"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stock-keeping unit: 1–64 of `A–Z`, `0–9`, `-`, `_`, `.`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    /// The rule of [`Sku::parse`] as a regular expression, for schemas.
    pub const PATTERN: &'static str = "^[A-Z0-9][A-Z0-9._-]{0,63}$";

    /// Validates `raw` (case-sensitive: SKUs are upper case).
    ///
    /// # Errors
    /// [`InvalidValue`] on field `sku` when the format does not match.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let valid = (1..=64).contains(&raw.len())
            && raw.starts_with(|c: char| c.is_ascii_uppercase() || c.is_ascii_digit())
            && raw.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidValue::new(
                "sku",
                "must be 1-64 characters of A-Z, 0-9, '-', '_', '.', starting with a letter or digit",
            ))
        }
    }

    /// The SKU text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Sku> for String {
    fn from(value: Sku) -> Self {
        value.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many units of one SKU an order line asks for: 1 to [`Quantity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    /// The largest quantity one line may ask for; more is almost surely a client bug.
    pub const MAX: u32 = 10_000;

    /// Validates a client-supplied count.
    ///
    /// # Errors
    /// [`InvalidValue`] on field `quantity` when it is below 1 or above [`Quantity::MAX`].
    pub fn new(raw: i64) -> Result<Self, InvalidValue> {
        match u32::try_from(raw) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(InvalidValue::new("quantity", format!("must be between 1 and {}", Self::MAX))),
        }
    }

    /// The count.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = InvalidValue;
    fn try_from(raw: i64) -> Result<Self, Self::Error> {
        Self::new(raw)
    }
}

impl From<Quantity> for u32 {
    fn from(value: Quantity) -> Self {
        value.0
    }
}

/// An ISO 4217 currency code: three upper-case letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Validates a currency code such as `EUR`.
    ///
    /// # Errors
    /// [`InvalidValue`] on field `currency` unless it is three ASCII upper-case letters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(InvalidValue::new("currency", "must be an ISO 4217 code such as EUR")),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // The constructor admits only ASCII letters, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in minor units (cents) of one currency. Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Money {
    /// Amount in the currency's minor unit; never negative for prices and totals.
    pub amount_minor: i64,
    /// The currency the amount is in.
    pub currency: Currency,
}

impl Money {
    /// The largest amount accepted anywhere (10^13 minor units): far above any real order, far below
    /// `i64::MAX`, so sums of many lines cannot overflow.
    pub const MAX_MINOR: i64 = 10_000_000_000_000;

    /// A non-negative amount.
    ///
    /// # Errors
    /// [`InvalidValue`] on field `amount_minor` when negative or above [`Money::MAX_MINOR`].
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, InvalidValue> {
        if (0..=Self::MAX_MINOR).contains(&amount_minor) {
            Ok(Self { amount_minor, currency })
        } else {
            Err(InvalidValue::new("amount_minor", format!("must be between 0 and {}", Self::MAX_MINOR)))
        }
    }

    /// This amount times a quantity, or `None` on overflow.
    pub fn times(self, quantity: Quantity) -> Option<Self> {
        self.amount_minor.checked_mul(i64::from(quantity.get())).map(|amount_minor| Self { amount_minor, ..self })
    }

    /// The sum of two amounts, or `None` when currencies differ or the sum overflows.
    pub fn plus(self, other: Self) -> Option<Self> {
        if self.currency != other.currency {
            return None;
        }
        self.amount_minor.checked_add(other.amount_minor).map(|amount_minor| Self { amount_minor, ..self })
    }
}

/// An ISO 3166-1 alpha-2 country code, e.g. `DE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Validates a two-letter upper-case country code.
    ///
    /// # Errors
    /// [`InvalidValue`] on field `country` otherwise.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw.as_bytes() {
            &[a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok(Self([a, b])),
            _ => Err(InvalidValue::new("country", "must be an ISO 3166-1 alpha-2 code such as DE")),
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("ZZ")
    }
}

impl TryFrom<String> for CountryCode {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<CountryCode> for String {
    fn from(value: CountryCode) -> Self {
        value.as_str().to_owned()
    }
}

/// An e-mail address to notify, e.g. `ada@example.com`: a dot-atom local part, `@`, and a domain name of
/// at least two labels; at most 254 characters, kept as sent (no trimming, no case folding).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    /// The rule of [`EmailAddress::parse`] as a regular expression, for schemas (the length limit apart).
    pub const PATTERN: &'static str = concat!(
        "^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*",
        "@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
    );
    /// The longest address (RFC 5321's limit on a path, less its angle brackets).
    pub const MAX_LEN: usize = 254;

    /// Validates `raw`.
    ///
    /// # Errors
    /// [`InvalidValue`] on field `contact_email` when it is not an address of that form.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
        let label = |l: &str| {
            (1..=63).contains(&l.len())
                && l.starts_with(|c: char| c.is_ascii_alphanumeric())
                && l.ends_with(|c: char| c.is_ascii_alphanumeric())
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        let valid = raw.len() <= Self::MAX_LEN
            && raw.split_once('@').is_some_and(|(local, domain)| {
                local.split('.').all(|atom| !atom.is_empty() && atom.chars().all(atext))
                    && domain.split('.').count() >= 2
                    && domain.split('.').all(label)
            });
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidValue::new(
                "contact_email",
                format!("must be an e-mail address such as ada@example.com, at most {} characters", Self::MAX_LEN),
            ))
        }
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = InvalidValue;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<EmailAddress> for String {
    fn from(value: EmailAddress) -> Self {
        value.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

schema!(EmailAddress, { "type": "string", "pattern": EmailAddress::PATTERN, "maxLength": 254 });

/// Where an order is shipped to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Address {
    /// Recipient's name.
    pub name: String,
    /// Street and number.
    pub line1: String,
    /// Optional second address line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    /// City or town.
    pub city: String,
    /// Postal code, free-form (formats differ per country).
    pub postal_code: String,
    /// Destination country.
    pub country: CountryCode,
}

/// An address as a client sends it, before validation.
#[derive(Debug, Clone, Default)]
pub struct RawAddress<'a> {
    /// Recipient's name.
    pub name: &'a str,
    /// Street and number.
    pub line1: &'a str,
    /// Optional second line.
    pub line2: Option<&'a str>,
    /// City.
    pub city: &'a str,
    /// Postal code.
    pub postal_code: &'a str,
    /// Country code.
    pub country: &'a str,
}

impl Address {
    /// Validates every part of an address.
    ///
    /// # Errors
    /// [`InvalidValue`] naming the first part at fault (`name`, `line1`, `line2`, `city`, `postal_code`,
    /// `country`).
    pub fn parse(raw: RawAddress<'_>) -> Result<Self, InvalidValue> {
        Ok(Self {
            name: check_text("name", raw.name, 200)?,
            line1: check_text("line1", raw.line1, 200)?,
            line2: raw.line2.filter(|l| !l.trim().is_empty()).map(|l| check_text("line2", l, 200)).transpose()?,
            city: check_text("city", raw.city, 100)?,
            postal_code: check_text("postal_code", raw.postal_code, 20)?,
            country: CountryCode::parse(raw.country.trim())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotency_key_is_one_to_255_printable_ascii_characters_kept_as_sent() {
        for good in ["k", "550e8400-e29b-41d4-a716-446655440000", &"x".repeat(255), "a~b!c"] {
            assert_eq!(IdempotencyKey::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", &"x".repeat(256), "with space", "tab\t", "café"] {
            assert_eq!(IdempotencyKey::parse(bad).unwrap_err().field, "Idempotency-Key", "{bad:?}");
        }
    }

    #[test]
    fn skus_accept_catalogue_codes_and_refuse_anything_else() {
        assert!(Sku::parse("SKU-001").is_ok());
        for bad in ["", "sku-1", "-SKU", "SKU 1", &"A".repeat(65), "SKU/1"] {
            assert_eq!(Sku::parse(bad).unwrap_err().field, "sku", "{bad:?}");
        }
    }

    #[test]
    fn quantities_must_be_positive_and_bounded() {
        assert_eq!(Quantity::new(1).unwrap().get(), 1);
        assert_eq!(Quantity::new(10_000).unwrap().get(), 10_000);
        for bad in [0, -1, 10_001, i64::MAX, i64::MIN] {
            assert!(Quantity::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn money_refuses_negative_amounts_and_mixed_currencies() {
        let eur = Currency::parse("EUR").unwrap();
        let usd = Currency::parse("USD").unwrap();
        assert!(Money::new(-1, eur).is_err());
        assert!(Money::new(Money::MAX_MINOR + 1, eur).is_err());
        let a = Money::new(1999, eur).unwrap();
        assert_eq!(a.times(Quantity::new(3).unwrap()).unwrap().amount_minor, 5997);
        assert!(a.plus(Money::new(1, usd).unwrap()).is_none());
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
    }

    #[test]
    fn money_serialises_as_minor_units_and_code() {
        let m = Money::new(1999, Currency::parse("EUR").unwrap()).unwrap();
        assert_eq!(serde_json::to_value(m).unwrap(), serde_json::json!({"amount_minor": 1999, "currency": "EUR"}));
    }

    #[test]
    fn addresses_name_the_part_at_fault() {
        let good = RawAddress {
            name: "Ada",
            line1: "1 Main St",
            line2: None,
            city: "Berlin",
            postal_code: "10115",
            country: "DE",
        };
        assert!(Address::parse(good.clone()).is_ok());
        let bad_country = RawAddress { country: "Germany", ..good.clone() };
        assert_eq!(Address::parse(bad_country).unwrap_err().field, "country");
        let empty_city = RawAddress { city: "  ", ..good };
        assert_eq!(Address::parse(empty_city).unwrap_err().field, "city");
    }

    #[test]
    fn e_mail_addresses_are_dot_atoms_at_a_domain_name() {
        for good in ["ada@example.com", "a.b+tag@mail.example.co.uk", "x@a-b.de", "o'neil@example.org"] {
            assert_eq!(EmailAddress::parse(good).unwrap().as_str(), good);
        }
        let long = format!("{}@example.com", "a".repeat(243));
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "a..b@example.com",
            ".a@example.com",
            "ada@-example.com",
            "ada@example-.com",
            "a b@example.com",
            " ada@example.com",
            "ada@exa_mple.com",
            "ada@@example.com",
            "ada@example.com.",
            "adä@example.com",
            &long,
        ] {
            assert_eq!(EmailAddress::parse(bad).unwrap_err().field, "contact_email", "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_e_mail_pattern_admits_exactly_the_addresses_the_domain_accepts(
            raw in proptest::collection::vec(proptest::sample::select(
                vec!['a', 'Z', '0', '.', '@', '-', '_', '+', '\'', '`', ' ', '"', 'é', '\n']), 0..14)
        ) {
            let raw: String = raw.into_iter().collect();
            let pattern = regex::Regex::new(EmailAddress::PATTERN).expect("the pattern compiles");
            proptest::prop_assert_eq!(pattern.is_match(&raw), EmailAddress::parse(&raw).is_ok(), "{:?}", raw);
        }
    }

    #[test]
    fn text_values_are_trimmed_and_bounded() {
        assert_eq!(CustomerId::parse("  cust-42 ").unwrap().as_str(), "cust-42");
        assert!(CustomerId::parse(&"x".repeat(65)).is_err());
        assert!(CustomerId::parse("a\u{0}b").is_err());
    }
}
