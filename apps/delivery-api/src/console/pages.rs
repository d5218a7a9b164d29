//! The console's pages and actions: the work lists (live through Server-Sent Events), a shipment with
//! what to pack and where, and the ship and deliver forms, refused by the same rules as the API.

use std::time::Duration;

use askama::Template;
use futures::Stream;
use orderflow_domain::{Carrier, OrderId, Shipment, ShipmentId, ShipmentStatus, TrackingNumber};
use orderflow_ports::delivery::ShipmentQuery;
use orderflow_ports::{Page, ReadError, TransitionFailure};
use poem::http::StatusCode;
use poem::session::Session;
use poem::web::sse::{Event, SSE};
use poem::web::{Data, Form, Html, Path, Query, Redirect};
use poem::{IntoResponse, Response, handler};
use serde::Deserialize;
use uuid::Uuid;

use super::PATH;
use super::signin::{SignedIn, csrf_matches, signed_in};
use crate::service::{DeliveryService, Target};

/// How many shipments each list shows.
const LIST_LENGTH: usize = 50;

/// How often an open console looks for changes. Polling the store, not listening to this process, so
/// a change made through another replica shows too.
const LIVE_EVERY: Duration = Duration::from_secs(2);

/// A line above the page's content: what just happened, or why it did not.
struct Message {
    kind: &'static str,
    text: String,
}

impl Message {
    fn ok(text: impl Into<String>) -> Option<Self> {
        Some(Self { kind: "ok", text: text.into() })
    }

    fn refused(text: impl Into<String>) -> Option<Self> {
        Some(Self { kind: "refused", text: text.into() })
    }
}

/// One shipment in a list.
struct Row {
    id: String,
    order_id: String,
    order_short: String,
    items: u32,
    city: String,
    carrier: String,
    tracking: String,
    since: String,
    since_iso: String,
}

impl From<Shipment> for Row {
    fn from(shipment: Shipment) -> Self {
        let since = if shipment.status == ShipmentStatus::Pending { shipment.created_at } else { shipment.updated_at };
        Self {
            id: shipment.id.to_string(),
            order_id: shipment.order.order_id.to_string(),
            order_short: short(shipment.order.order_id),
            items: shipment.order.lines.iter().map(|line| line.quantity.get()).sum(),
            city: shipment.order.shipping_address.city.clone(),
            carrier: shipment.carrier.map(|c| c.as_str().to_owned()).unwrap_or_default(),
            tracking: shipment.tracking_number.map(|t| t.as_str().to_owned()).unwrap_or_default(),
            since: since.format("%Y-%m-%d %H:%M UTC").to_string(),
            since_iso: since.to_rfc3339(),
        }
    }
}

/// The three work lists.
struct Lists {
    to_ship: Vec<Row>,
    in_transit: Vec<Row>,
    delivered: Vec<Row>,
}

#[derive(Template)]
#[template(path = "console/lists_page.html")]
struct ListsPage {
    user: Option<SignedIn>,
    message: Option<Message>,
    search: String,
    lists: Lists,
}

#[derive(Template)]
#[template(path = "console/lists.html")]
struct ListsFragment {
    lists: Lists,
}

/// A shipment as its page shows it.
struct ShipmentView {
    id: String,
    order_id: String,
    order_short: String,
    status: &'static str,
    created: String,
    created_iso: String,
    carrier: Option<String>,
    tracking: Option<String>,
    lines: Vec<(String, u32)>,
    address: Vec<String>,
}

impl From<Shipment> for ShipmentView {
    fn from(shipment: Shipment) -> Self {
        let address = &shipment.order.shipping_address;
        let address = [Some(&address.name), Some(&address.line1), address.line2.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .chain([format!("{} {}", address.postal_code, address.city), address.country.as_str().to_owned()])
            .collect();
        Self {
            id: shipment.id.to_string(),
            order_id: shipment.order.order_id.to_string(),
            order_short: short(shipment.order.order_id),
            status: shipment.status.as_str(),
            created: shipment.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            created_iso: shipment.created_at.to_rfc3339(),
            carrier: shipment.carrier.map(|c| c.as_str().to_owned()),
            tracking: shipment.tracking_number.map(|t| t.as_str().to_owned()),
            lines: shipment.order.lines.iter().map(|l| (l.sku.as_str().to_owned(), l.quantity.get())).collect(),
            address,
        }
    }
}

#[derive(Template)]
#[template(path = "console/shipment.html")]
struct ShipmentPage {
    user: Option<SignedIn>,
    message: Option<Message>,
    shipment: ShipmentView,
    form_carrier: String,
    form_tracking: String,
}

#[derive(Template)]
#[template(path = "console/notice.html")]
struct NoticePage {
    user: Option<SignedIn>,
    message: Option<Message>,
    title: String,
    text: String,
    link_href: String,
    link_text: &'static str,
}

/// A page that only says something, with its status.
pub(super) struct Notice {
    status: StatusCode,
    page: NoticePage,
}

/// A page that says `text`, answered with `status`.
pub(super) fn notice(status: StatusCode, title: &str, text: &str) -> Notice {
    let page = NoticePage {
        user: None,
        message: None,
        title: title.to_owned(),
        text: text.to_owned(),
        link_href: PATH.to_owned(),
        link_text: "Back to the shipments",
    };
    Notice { status, page }
}

impl Notice {
    /// The page, with a link to sign in.
    pub(super) fn sign_in_again(mut self) -> Response {
        self.page.link_href = format!("{PATH}/login");
        self.page.link_text = "Sign in";
        self.into_response()
    }

    /// The page.
    pub(super) fn into_response(self) -> Response {
        render(self.status, &self.page)
    }
}

fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).with_status(status).into_response(),
        Err(error) => {
            tracing::error!(%error, "a console page did not render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The first eight characters of an order id: enough to tell orders apart on a list.
fn short(id: OrderId) -> String {
    id.to_string().chars().take(8).collect()
}

/// A refused form: it did not come from a page of this session.
pub(super) fn forged() -> Response {
    notice(StatusCode::FORBIDDEN, "Refused", "The form did not come from this session; reload the page and try again.")
        .into_response()
}

fn unavailable() -> Response {
    notice(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "The shipments cannot be read right now; try again.")
        .into_response()
}

/// Who is looking at a page, or the answer when nobody is signed in (to sign in) or the store cannot say
/// (boxed: a response is large, the rest small).
async fn viewing(session: &Session, service: &DeliveryService) -> Result<SignedIn, Box<Response>> {
    match signed_in(session, service).await {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(Box::new(sign_in_first())),
        Err(_) => Err(Box::new(unavailable())),
    }
}

fn sign_in_first() -> Response {
    Redirect::see_other(format!("{PATH}/login")).into_response()
}

async fn lists_of(service: &DeliveryService) -> Result<Lists, ReadError> {
    let list = |status, oldest_first| ShipmentQuery {
        status: Some(status),
        oldest_first,
        limit: LIST_LENGTH,
        ..ShipmentQuery::default()
    };
    let rows = |page: Page<Shipment, ShipmentId>| page.items.into_iter().map(Row::from).collect();
    Ok(Lists {
        to_ship: rows(service.shipments(list(ShipmentStatus::Pending, true)).await?),
        in_transit: rows(service.shipments(list(ShipmentStatus::Shipped, true)).await?),
        delivered: rows(service.shipments(list(ShipmentStatus::Delivered, false)).await?),
    })
}

/// The search box's question.
#[derive(Deserialize)]
pub(super) struct Search {
    #[serde(default)]
    q: String,
}

/// The work lists, or the shipment a search names.
#[handler]
pub(super) async fn index(
    session: &Session,
    Query(search): Query<Search>,
    Data(service): Data<&DeliveryService>,
) -> Response {
    let user = match viewing(session, service).await {
        Ok(user) => user,
        Err(answer) => return *answer,
    };
    let wanted = search.q.trim();
    let mut message = None;
    if !wanted.is_empty() {
        match find(service, wanted).await {
            Ok(Some(id)) => return Redirect::see_other(format!("{PATH}/shipments/{id}")).into_response(),
            Ok(None) => {
                message =
                    Message::refused(format!("No shipment has the order id, shipment id or tracking number {wanted}."))
            }
            Err(_) => return unavailable(),
        }
    }
    match lists_of(service).await {
        Ok(lists) => render(StatusCode::OK, &ListsPage { user: Some(user), message, search: wanted.to_owned(), lists }),
        Err(_) => unavailable(),
    }
}

/// The shipment an order id, shipment id or tracking number names.
async fn find(service: &DeliveryService, wanted: &str) -> Result<Option<ShipmentId>, ReadError> {
    if let Ok(uuid) = Uuid::parse_str(wanted) {
        for target in [Target::Shipment(ShipmentId::from_uuid(uuid)), Target::Order(OrderId::from_uuid(uuid))] {
            if let Some(shipment) = service.find(target).await? {
                return Ok(Some(shipment.id));
            }
        }
        return Ok(None);
    }
    let Ok(tracking) = TrackingNumber::parse(wanted) else { return Ok(None) };
    let query = ShipmentQuery { tracking_number: Some(tracking), limit: 1, ..ShipmentQuery::default() };
    Ok(service.shipments(query).await?.items.first().map(|s| s.id))
}

/// The lists' HTML whenever it changes, as `lists` events, to a signed-in browser.
#[handler]
pub(super) async fn live_lists(session: &Session, Data(service): Data<&DeliveryService>) -> Response {
    match signed_in(session, service).await {
        Ok(Some(user)) => SSE::new(changes(service.clone(), user.session().to_owned()))
            .keep_alive(Duration::from_secs(15))
            .into_response(),
        Ok(None) => StatusCode::UNAUTHORIZED.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The lists whenever they change, until the session `signed_in` is signed out.
fn changes(service: DeliveryService, signed_in: String) -> impl Stream<Item = Event> + Send + 'static {
    futures::stream::unfold((service, None::<String>), move |(service, shown)| {
        let signed_in = signed_in.clone();
        async move {
            let mut first = shown.is_none();
            loop {
                if !first {
                    tokio::time::sleep(LIVE_EVERY).await;
                }
                first = false;
                if service.signed_out(&signed_in).await.unwrap_or(false) {
                    return None;
                }
                let Ok(lists) = lists_of(&service).await else { continue };
                let Ok(html) = (ListsFragment { lists }).render() else { continue };
                if shown.as_deref() != Some(html.as_str()) {
                    let event = Event::message(html.clone()).event_type("lists");
                    return Some((event, (service, Some(html))));
                }
            }
        }
    })
}

/// What just happened, after a redirect.
#[derive(Deserialize)]
pub(super) struct Done {
    done: Option<String>,
}

fn shipment_id(raw: &str) -> Option<ShipmentId> {
    Uuid::parse_str(raw).ok().map(ShipmentId::from_uuid)
}

fn not_found() -> Response {
    notice(StatusCode::NOT_FOUND, "Not found", "There is no such shipment.").into_response()
}

/// A shipment's page, with `message` and the ship form's values.
async fn render_shipment(
    service: &DeliveryService,
    user: SignedIn,
    id: ShipmentId,
    status: StatusCode,
    message: Option<Message>,
    form: (String, String),
) -> Response {
    match service.find(Target::Shipment(id)).await {
        Ok(Some(shipment)) => {
            let (form_carrier, form_tracking) = form;
            let page =
                ShipmentPage { user: Some(user), message, shipment: shipment.into(), form_carrier, form_tracking };
            render(status, &page)
        }
        Ok(None) => not_found(),
        Err(_) => unavailable(),
    }
}

/// One shipment: what to pack, where, and what can be done with it.
#[handler]
pub(super) async fn show_shipment(
    session: &Session,
    Path(id): Path<String>,
    Query(done): Query<Done>,
    Data(service): Data<&DeliveryService>,
) -> Response {
    let user = match viewing(session, service).await {
        Ok(user) => user,
        Err(answer) => return *answer,
    };
    let Some(id) = shipment_id(&id) else { return not_found() };
    let message = match done.done.as_deref() {
        Some("shipped") => Message::ok("Marked as shipped."),
        Some("delivered") => Message::ok("Marked as delivered."),
        _ => None,
    };
    render_shipment(service, user, id, StatusCode::OK, message, (String::new(), String::new())).await
}

/// The ship form.
#[derive(Deserialize)]
pub(super) struct ShipForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    carrier: String,
    #[serde(default)]
    tracking_number: String,
}

/// The deliver form.
#[derive(Deserialize)]
pub(super) struct DeliverForm {
    #[serde(default)]
    csrf: String,
}

/// Who acts on which shipment, or the answer for someone who may not or a shipment that cannot be
/// (boxed: a response is large, the rest small).
async fn acting(
    session: &Session,
    service: &DeliveryService,
    csrf: &str,
    id: &str,
) -> Result<(SignedIn, ShipmentId), Box<Response>> {
    let Some(user) = signed_in(session, service).await.map_err(|_| Box::new(unavailable()))? else {
        return Err(Box::new(
            notice(StatusCode::UNAUTHORIZED, "Signed out", "Your session ended; sign in and try again.")
                .sign_in_again(),
        ));
    };
    if !csrf_matches(&user, csrf) {
        return Err(Box::new(forged()));
    }
    if !user.can_ship {
        let text = "Your account may see shipments but not change them.";
        return Err(Box::new(notice(StatusCode::FORBIDDEN, "Read only", text).into_response()));
    }
    let id = shipment_id(id).ok_or_else(|| Box::new(not_found()))?;
    Ok((user, id))
}

/// Why a transition was refused, for the person who asked.
fn refusal(failure: &TransitionFailure) -> (StatusCode, String) {
    match failure {
        TransitionFailure::NotFound => (StatusCode::NOT_FOUND, "There is no such shipment.".to_owned()),
        TransitionFailure::NotAllowed(why) => (StatusCode::CONFLICT, format!("Not allowed now: {why}.")),
        TransitionFailure::Contended => {
            (StatusCode::CONFLICT, "Someone changed this shipment at the same moment; try again.".to_owned())
        }
        TransitionFailure::Unexpected(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "The shipment could not be saved right now; try again.".to_owned())
        }
    }
}

/// Hands the parcel to a carrier.
#[handler]
pub(super) async fn ship(
    session: &Session,
    Path(id): Path<String>,
    Form(form): Form<ShipForm>,
    Data(service): Data<&DeliveryService>,
) -> Response {
    let (user, id) = match acting(session, service, &form.csrf, &id).await {
        Ok(acting) => acting,
        Err(answer) => return *answer,
    };
    let entered = (form.carrier.trim().to_owned(), form.tracking_number.trim().to_owned());
    let parsed = Carrier::parse(&entered.0).and_then(|c| Ok((c, TrackingNumber::parse(&entered.1)?)));
    let (carrier, tracking) = match parsed {
        Ok(both) => both,
        Err(invalid) => {
            let field = if invalid.field == "carrier" { "Carrier" } else { "Tracking number" };
            let text = format!("{field}: {}.", invalid.reason);
            return render_shipment(
                service,
                user,
                id,
                StatusCode::UNPROCESSABLE_ENTITY,
                Message::refused(text),
                entered,
            )
            .await;
        }
    };
    let shipped = service.ship(id, carrier, tracking).await;
    answer(service, user, id, shipped, "shipped", entered).await
}

/// Confirms the parcel arrived.
#[handler]
pub(super) async fn deliver(
    session: &Session,
    Path(id): Path<String>,
    Form(form): Form<DeliverForm>,
    Data(service): Data<&DeliveryService>,
) -> Response {
    let (user, id) = match acting(session, service, &form.csrf, &id).await {
        Ok(acting) => acting,
        Err(answer) => return *answer,
    };
    let delivered = service.deliver(id).await;
    answer(service, user, id, delivered, "delivered", (String::new(), String::new())).await
}

/// After an action: back to the shipment saying it was `done`, or its page again saying why not, with
/// what the form held.
async fn answer(
    service: &DeliveryService,
    user: SignedIn,
    id: ShipmentId,
    result: Result<Shipment, TransitionFailure>,
    done: &str,
    entered: (String, String),
) -> Response {
    match result {
        Ok(_) => Redirect::see_other(format!("{PATH}/shipments/{id}?done={done}")).into_response(),
        Err(failure) => {
            let (status, text) = refusal(&failure);
            render_shipment(service, user, id, status, Message::refused(text), entered).await
        }
    }
}

/// The console's stylesheet.
#[handler]
pub(super) fn stylesheet() -> Response {
    Response::builder().content_type("text/css; charset=utf-8").body(include_str!("../../assets/console.css"))
}

/// The console's one script: live lists.
#[handler]
pub(super) fn script() -> Response {
    Response::builder().content_type("text/javascript; charset=utf-8").body(include_str!("../../assets/console.js"))
}
