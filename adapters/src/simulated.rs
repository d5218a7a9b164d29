//! A simulated payment gateway: deterministic declines by rule, configurable latency and transient
//! failures — what the Sales service charges against until a real provider is wired in.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use orderflow_domain::{Money, OrderId, PaymentOutcome};
use orderflow_ports::payment::{PaymentError, PaymentGateway};

/// The gateway's rules.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// Charges above this many minor units are declined.
    pub decline_above_minor: i64,
    /// How long each call takes.
    pub latency: Duration,
    /// Fraction (0–1) of calls that fail transiently before deciding anything.
    pub transient_failure_rate: f64,
    /// How many charges it remembers, the oldest forgotten first (100,000 by default, about 10 MiB): a
    /// service that runs for months must not keep every order it ever charged. Remembering is what makes a
    /// repeated charge repeat its verdict and a refund undo a charge; the Sales service never charges an
    /// order twice anyway (its inbox and the order's state see to that), so only a refund long after its
    /// charge, when 100,000 newer charges came between, finds nothing to undo.
    pub remembered: usize,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            decline_above_minor: 1_000_000,
            latency: Duration::ZERO,
            transient_failure_rate: 0.0,
            remembered: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Charge {
    outcome: PaymentOutcome,
    refunded: bool,
}

/// Charges and refunds in memory, idempotently per order.
pub struct SimulatedPaymentGateway {
    settings: PaymentSettings,
    ledger: Mutex<Ledger>,
}

/// The charges remembered, and the order they came in, to forget the oldest.
#[derive(Default)]
struct Ledger {
    charges: HashMap<OrderId, Charge>,
    arrival: VecDeque<OrderId>,
}

#[derive(Debug, thiserror::Error)]
#[error("simulated transient gateway failure")]
struct SimulatedOutage;

impl SimulatedPaymentGateway {
    /// A gateway following `settings`.
    pub fn new(settings: PaymentSettings) -> Self {
        Self { settings, ledger: Mutex::default() }
    }

    /// Whether the charge of `order` was refunded.
    pub fn refunded(&self, order: OrderId) -> bool {
        self.ledger().charges.get(&order).is_some_and(|c| c.refunded)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn call(&self) -> Result<(), PaymentError> {
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
        if self.settings.transient_failure_rate > 0.0 && rand::random::<f64>() < self.settings.transient_failure_rate {
            return Err(PaymentError::Unexpected(Box::new(SimulatedOutage)));
        }
        Ok(())
    }
}

#[async_trait]
impl PaymentGateway for SimulatedPaymentGateway {
    async fn charge(&self, order: OrderId, amount: Money) -> Result<PaymentOutcome, PaymentError> {
        self.call().await?;
        let mut ledger = self.ledger();
        if let Some(charge) = ledger.charges.get(&order) {
            return Ok(charge.outcome.clone());
        }
        let outcome = if amount.amount_minor > self.settings.decline_above_minor {
            PaymentOutcome::Declined {
                reason: format!("amount exceeds the limit of {} minor units", self.settings.decline_above_minor),
            }
        } else {
            PaymentOutcome::Completed
        };
        ledger.charges.insert(order, Charge { outcome: outcome.clone(), refunded: false });
        ledger.arrival.push_back(order);
        while ledger.arrival.len() > self.settings.remembered {
            if let Some(oldest) = ledger.arrival.pop_front() {
                ledger.charges.remove(&oldest);
            }
        }
        Ok(outcome)
    }

    async fn refund(&self, order: OrderId) -> Result<(), PaymentError> {
        self.call().await?;
        if let Some(charge) = self.ledger().charges.get_mut(&order) {
            charge.refunded = charge.outcome == PaymentOutcome::Completed;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use orderflow_domain::Currency;

    use super::*;

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
    }

    #[tokio::test]
    async fn charges_above_the_limit_are_declined_and_verdicts_are_repeated_not_recharged() {
        let gateway = SimulatedPaymentGateway::new(PaymentSettings { decline_above_minor: 100, ..Default::default() });
        let (small, big) = (OrderId::from_uuid(uuid::Uuid::now_v7()), OrderId::from_uuid(uuid::Uuid::now_v7()));
        assert_eq!(gateway.charge(small, eur(100)).await.unwrap(), PaymentOutcome::Completed);
        assert!(matches!(gateway.charge(big, eur(101)).await.unwrap(), PaymentOutcome::Declined { .. }));
        // The same order charged again with another amount keeps its first verdict.
        assert_eq!(gateway.charge(small, eur(1_000)).await.unwrap(), PaymentOutcome::Completed);
    }

    #[tokio::test]
    async fn only_completed_charges_are_refunded() {
        let gateway = SimulatedPaymentGateway::new(PaymentSettings { decline_above_minor: 100, ..Default::default() });
        let (paid, declined) = (OrderId::from_uuid(uuid::Uuid::now_v7()), OrderId::from_uuid(uuid::Uuid::now_v7()));
        gateway.charge(paid, eur(1)).await.unwrap();
        gateway.charge(declined, eur(1_000)).await.unwrap();
        gateway.refund(paid).await.unwrap();
        gateway.refund(declined).await.unwrap();
        assert!(gateway.refunded(paid));
        assert!(!gateway.refunded(declined));
    }

    #[tokio::test]
    async fn beyond_what_it_remembers_the_oldest_charge_is_forgotten_first() {
        let gateway = SimulatedPaymentGateway::new(PaymentSettings {
            decline_above_minor: 100,
            remembered: 2,
            ..Default::default()
        });
        let [first, second, third] = [(); 3].map(|()| OrderId::from_uuid(uuid::Uuid::now_v7()));
        for order in [first, second] {
            assert_eq!(gateway.charge(order, eur(1)).await.unwrap(), PaymentOutcome::Completed);
        }
        // Within what it remembers a repeated charge repeats its verdict, whatever the amount.
        assert_eq!(gateway.charge(first, eur(1_000)).await.unwrap(), PaymentOutcome::Completed);

        gateway.charge(third, eur(1)).await.unwrap();
        // The first charge is forgotten: charged again it is decided anew, and it has nothing to refund.
        gateway.refund(first).await.unwrap();
        assert!(!gateway.refunded(first));
        gateway.refund(third).await.unwrap();
        assert!(gateway.refunded(third));
        assert!(matches!(gateway.charge(first, eur(1_000)).await.unwrap(), PaymentOutcome::Declined { .. }));
        // Deciding it anew remembered it again, and the oldest remembered (the second) went instead.
        gateway.refund(second).await.unwrap();
        assert!(!gateway.refunded(second));
    }

    #[tokio::test]
    async fn a_failure_rate_of_one_always_fails_transiently() {
        let gateway =
            SimulatedPaymentGateway::new(PaymentSettings { transient_failure_rate: 1.0, ..Default::default() });
        let order = OrderId::from_uuid(uuid::Uuid::now_v7());
        assert!(gateway.charge(order, eur(1)).await.is_err());
        assert!(!gateway.refunded(order));
    }
}
