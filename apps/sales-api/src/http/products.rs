//! `/products`: the catalogue and its stock.

use orderflow_domain::{InvalidValue, ProductName, Sku};
use orderflow_ports::Page;
use orderflow_ports::sales::PutProductError;
use orderflow_runtime::http::{BearerAuth, Listing, Lookup, Problem, Problems, Scope, StrictJson, page_limit};
use orderflow_runtime::refusals;
use poem::http::StatusCode;
use poem_openapi::OpenApi;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;

use super::dto::{ProductDto, ProductList, PutProductRequest, SkuText};
use super::{ApiTags, read_failed};
use crate::service::SalesService;

/// The catalogue endpoints.
pub struct ProductsApi {
    pub(crate) service: SalesService,
}

refusals!(
    /// Creating or updating a product: a malformed SKU or body, stock below the reservations, too large,
    /// not JSON.
    Upsert: 400, 409, 413, 415
);

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
        #[oai(scope = "Scope::OrdersRead")] _auth: BearerAuth,
        /// Page size, 1-100 (default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<i64>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<SkuText>>,
    ) -> Result<Json<ProductList>, Problems<Listing>> {
        let after =
            cursor.0.map(|c| Sku::parse(c.as_str()).map_err(|e| Problem::invalid("cursor", e.reason))).transpose()?;
        let page = self.service.products(page_limit(limit.0)?, after).await.map_err(|e| read_failed(&e))?;
        let next = page.next.map(|sku| SkuText::from(sku.as_str().to_owned()));
        Ok(Json(ProductList::from(Page { items: page.items, next })))
    }

    /// One product with its stock and reservations.
    #[oai(path = "/products/:sku", method = "get", operation_id = "get_product")]
    async fn get(
        &self,
        #[oai(scope = "Scope::OrdersRead")] _auth: BearerAuth,
        sku: Path<SkuText>,
    ) -> Result<Json<ProductDto>, Problems<Lookup>> {
        let sku = parse_sku(sku.0.as_str())?;
        let found = self.service.product(sku).await.map_err(|e| read_failed(&e))?;
        found.map(|p| Json(p.into())).ok_or_else(|| Problem::not_found("the product").into())
    }

    /// Create or update a product (admin): name, price and units on hand. Reservations are kept.
    #[oai(path = "/products/:sku", method = "put", operation_id = "put_product")]
    async fn put(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
        sku: Path<SkuText>,
        body: StrictJson<PutProductRequest>,
    ) -> Result<Json<ProductDto>, Problems<Upsert>> {
        let sku = parse_sku(sku.0.as_str())?;
        let body = body.0;
        let name = ProductName::parse(body.name.as_str()).map_err(invalid)?;
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
