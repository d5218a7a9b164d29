//! `/products`: the catalogue and its stock.

use orderflow_domain::{InvalidValue, ProductName, Sku};
use orderflow_ports::sales::PutProductError;
use orderflow_runtime::http::{BearerAuth, Problem, StrictJson, decode_cursor, encode_cursor, page_limit};
use poem::http::StatusCode;
use poem_openapi::OpenApi;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;

use super::dto::{ProductDto, ProductList, PutProductRequest};
use super::{ApiTags, read_failed};
use crate::service::SalesService;

/// The catalogue endpoints.
pub struct ProductsApi {
    pub(crate) service: SalesService,
}

fn invalid(e: InvalidValue) -> Problem {
    Problem::invalid(e.field, e.reason)
}

fn parse_sku(raw: &str) -> Result<Sku, Problem> {
    Sku::parse(raw).map_err(invalid)
}

#[OpenApi(tag = "ApiTags::Products")]
impl ProductsApi {
    /// The catalogue in SKU order.
    #[oai(path = "/products", method = "get", operation_id = "list_products")]
    async fn list(
        &self,
        auth: BearerAuth,
        /// Page size, 1-100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<i64>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> poem::Result<Json<ProductList>> {
        auth.require("orders:read")?;
        let after = cursor.0.map(|c| decode_cursor(&c, |k| Sku::parse(k).ok())).transpose()?;
        let page = self.service.products(page_limit(limit.0)?, after).await.map_err(|e| read_failed(&e))?;
        Ok(Json(ProductList {
            items: page.items.into_iter().map(Into::into).collect(),
            next_cursor: page.next.map(|sku| encode_cursor(sku.as_str())),
        }))
    }

    /// One product with its stock and reservations.
    #[oai(path = "/products/:sku", method = "get", operation_id = "get_product")]
    async fn get(&self, auth: BearerAuth, sku: Path<String>) -> poem::Result<Json<ProductDto>> {
        auth.require("orders:read")?;
        let sku = parse_sku(&sku.0)?;
        let found = self.service.product(sku).await.map_err(|e| read_failed(&e))?;
        found.map(|p| Json(p.into())).ok_or_else(|| Problem::not_found("the product").into())
    }

    /// Create or update a product (admin): name, price and units on hand. Reservations are kept.
    #[oai(path = "/products/:sku", method = "put", operation_id = "put_product")]
    async fn put(
        &self,
        auth: BearerAuth,
        sku: Path<String>,
        body: StrictJson<PutProductRequest>,
    ) -> poem::Result<Json<ProductDto>> {
        auth.require("admin")?;
        let sku = parse_sku(&sku.0)?;
        let body = body.0;
        let name = ProductName::parse(&body.name).map_err(invalid)?;
        let price = body.price.parse().map_err(|e| invalid(e.within("price")))?;
        let stock = u32::try_from(body.stock)
            .ok()
            .filter(|s| *s <= 1_000_000_000)
            .ok_or_else(|| Problem::invalid("stock", "must be between 0 and 1000000000"))?;
        let product = self.service.put_product(sku, name, price, stock).await.map_err(|e| match e {
            PutProductError::StockBelowReserved { stock, reserved } => Problem::new(
                StatusCode::CONFLICT,
                "stock-below-reserved",
                "Stock below reservations",
                format!("stock {stock} is below the {reserved} units reserved by open orders"),
            )
            .with_field("stock"),
            other => Problem::internal(&other),
        })?;
        Ok(Json(product.into()))
    }
}
