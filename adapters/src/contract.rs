//! Contract test suites of the store ports: the `# Errors` docs of `SalesStore`, `DeliveryStore` and
//! `OutboxStore` turned into checks that every adapter (in-memory now, PostgreSQL later) runs unchanged.
//! Public behind the `contract` feature so an adapter's tests anywhere can run them; each macro expands to
//! one `#[tokio::test]` per check, named after it.

pub mod delivery;
pub mod fixtures;
pub mod outbox;
pub mod sales;

/// Expands to one `#[tokio::test]` per [`contract::sales`](crate::contract::sales) check, each run on a
/// fresh store made by `$new`: a closure returning a future of an empty store
/// (`impl SalesStore + 'static`), e.g. `sales_store_contract!(|| async { InMemorySalesStore::new() });`.
/// Invoke it in a module of its own: the tests are named after the checks.
#[macro_export]
macro_rules! sales_store_contract {
    ($new:expr) => {
        $crate::__contract_tests!(sales, $new;
            placing_an_order_reserves_its_stock_and_stores_order_and_outbox,
            an_order_short_of_stock_stores_nothing_and_lists_every_short_sku,
            placing_with_an_unknown_sku_stores_nothing,
            the_same_key_and_hash_replays_the_first_order,
            the_same_key_with_another_hash_is_refused_as_reused,
            an_expired_key_may_be_used_again,
            keys_of_different_clients_do_not_collide,
            concurrent_placements_never_oversell,
            applying_a_change_with_a_stale_version_is_a_conflict_and_writes_nothing,
            applying_a_change_twice_with_the_same_inbox_entry_is_already_processed,
            releasing_and_committing_stock_moves_reserved_and_stock,
            a_change_of_an_unknown_order_is_not_found,
            a_batch_of_changes_gives_each_the_outcome_it_would_have_alone,
            the_timeline_lists_audit_events_oldest_first,
            orders_are_listed_newest_first_with_filters_and_keyset_pages,
            products_are_paged_in_sku_order,
            stock_below_reservations_is_refused,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`contract::delivery`](crate::contract::delivery) check, each run
/// on a fresh store made by `$new` (a closure returning a future of an empty `impl DeliveryStore + 'static`),
/// e.g. `delivery_store_contract!(|| async { InMemoryDeliveryStore::new() });`.
#[macro_export]
macro_rules! delivery_store_contract {
    ($new:expr) => {
        $crate::__contract_tests!(delivery, $new;
            creating_a_second_shipment_for_an_order_is_a_conflict,
            changing_with_a_stale_version_is_a_conflict,
            changing_an_unknown_shipment_is_not_found,
            a_redelivered_message_is_already_processed,
            a_batch_commits_what_applies_and_refuses_the_rest_alone,
            a_batch_of_creations_creates_each_new_shipment_once,
            shipments_filter_by_status_and_updated_before_and_page_keyset,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`contract::outbox`](crate::contract::outbox) check (the outbox
/// table and the relay over it), each run on a fresh fixture made by `$new`: a closure returning a future
/// of an `impl OutboxFixture + 'static` over an empty store, usually
/// [`SalesOutbox`](crate::contract::outbox::SalesOutbox) or
/// [`DeliveryOutbox`](crate::contract::outbox::DeliveryOutbox), e.g.
/// `outbox_store_contract!(|| async { SalesOutbox::new(InMemorySalesStore::new()) });`.
#[macro_export]
macro_rules! outbox_store_contract {
    ($new:expr) => {
        $crate::__contract_tests!(outbox, $new;
            claimed_rows_come_in_commit_order,
            the_command_backlog_counts_owed_commands_and_ages_from_the_oldest,
            a_claimed_row_is_not_claimed_again_until_its_lease_expires,
            a_released_row_is_claimed_again_first,
            a_row_marked_for_all_its_destinations_is_not_claimed_again,
            a_row_with_one_destination_left_is_claimed_for_only_that_one,
            a_row_without_destinations_is_never_claimed,
            wait_for_new_returns_when_a_row_is_written,
            the_relay_publishes_every_row_once_and_leaves_nothing_owed,
            rows_stay_owed_while_the_publisher_fails_and_publish_after_it_recovers,
        );
    };
}

/// The shared expansion of the contract macros: one multi-threaded `#[tokio::test]` per check.
#[doc(hidden)]
#[macro_export]
macro_rules! __contract_tests {
    ($suite:ident, $new:expr; $($check:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let subject = ($new)().await;
                $crate::contract::$suite::$check(::std::sync::Arc::new(subject)).await;
            }
        )+
    };
}

#[cfg(all(test, feature = "memory"))]
mod in_memory {
    mod sales {
        use crate::memory::InMemorySalesStore;

        crate::sales_store_contract!(|| async { InMemorySalesStore::new() });
    }

    mod delivery {
        use crate::memory::InMemoryDeliveryStore;

        crate::delivery_store_contract!(|| async { InMemoryDeliveryStore::new() });
    }

    mod sales_outbox {
        use crate::contract::outbox::SalesOutbox;
        use crate::memory::InMemorySalesStore;

        crate::outbox_store_contract!(|| async { SalesOutbox::new(InMemorySalesStore::new()) });
    }

    mod delivery_outbox {
        use crate::contract::outbox::DeliveryOutbox;
        use crate::memory::InMemoryDeliveryStore;

        crate::outbox_store_contract!(|| async { DeliveryOutbox::new(InMemoryDeliveryStore::new()) });
    }
}
