//! Contract test suites of the ports: the docs of the store ports (`SalesStore`, `DeliveryStore`,
//! `OutboxStore`), the command bus, the order cache, the rate limiter and the audit log turned into checks
//! that the in-memory adapter and the real one both run unchanged, so a swap-in behaves like what it
//! stands in for. Public behind the `contract` feature so an adapter's tests anywhere can run them; each
//! macro expands to one `#[tokio::test]` per check, named after it.

pub mod audit;
pub mod bus;
pub mod cache;
pub mod delivery;
pub mod fixtures;
pub mod mail_server;
pub mod outbox;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod rate_limit;
pub mod sales;
pub mod webhooks;

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
            keys_recorded_before_a_moment_are_forgotten_and_only_those,
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
            enqueued_messages_are_owed_in_their_order_and_store_no_order,
            a_notification_is_sent_once_per_message_and_again_only_after_a_failure,
            concurrent_deliveries_of_one_notification_send_it_once,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`contract::webhooks`](crate::contract::webhooks) check, each run on
/// a fresh Sales store that keeps webhooks (`impl SalesStore + WebhookStore + 'static`) made by `$new`.
#[macro_export]
macro_rules! webhook_store_contract {
    ($new:expr) => {
        $crate::__contract_tests!(webhooks, $new;
            each_order_event_is_owed_to_every_endpoint_subscribed_to_it,
            one_order_s_deliveries_are_taken_in_order_one_at_a_time,
            a_dead_letter_lets_its_order_move_on_and_can_be_redelivered,
            a_disabled_endpoint_gets_nothing_and_a_removed_one_is_owed_nothing,
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
            shipments_filter_by_status_and_page_keyset,
            due_shipments_come_longest_waiting_first,
            a_due_shipment_carries_the_trace_of_its_creation,
            a_signed_out_console_session_stays_signed_out_and_no_other_is,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`contract::outbox`](crate::contract::outbox) check, each run on a
/// fresh fixture made by `$new`: a closure returning a future of an `impl OutboxFixture + 'static` over an
/// empty store, usually
/// [`SalesOutbox`](crate::contract::outbox::SalesOutbox) or
/// [`DeliveryOutbox`](crate::contract::outbox::DeliveryOutbox), e.g.
/// `outbox_store_contract!(|| async { SalesOutbox::new(InMemorySalesStore::new()) });`.
#[macro_export]
macro_rules! outbox_store_contract {
    ($new:expr) => {
        $crate::__contract_tests!(outbox, $new;
            rows_are_taken_in_commit_order_and_each_destination_owes_its_own,
            the_command_backlog_counts_owed_commands_and_ages_from_the_oldest,
            a_held_batch_keeps_its_rows_from_other_takers_until_it_settles,
            a_batch_dropped_unsettled_leaves_its_rows_owed,
            rows_left_out_of_a_settle_are_taken_again_first,
            a_row_settled_for_all_its_destinations_is_not_taken_again,
            a_row_with_one_destination_left_is_owed_to_only_that_one,
            a_row_without_destinations_is_never_taken,
            wait_for_new_returns_when_a_row_is_written,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`contract::bus`](crate::contract::bus) check, each run on a fresh
/// fixture made by `$new`: a closure returning a future of an `impl BusFixture + 'static`, e.g.
/// `command_bus_contract!(|| async { InMemoryBusFixture });`.
#[macro_export]
macro_rules! command_bus_contract {
    ($new:expr) => {
        $crate::__contract_tests!(bus, $new;
            published_commands_reach_the_consumer_in_publish_order,
            publish_all_confirms_each_command_and_keeps_their_order,
            messages_wait_in_their_queue_until_a_consumer_takes_them,
            deliveries_being_handled_are_not_waiting_and_the_rest_are,
            a_done_delivery_is_not_redelivered,
            a_transient_failure_climbs_the_retry_ladder_then_is_dead_lettered,
            a_transient_failure_is_retried_until_it_succeeds,
            a_permanent_failure_is_dead_lettered_without_retries,
            a_dead_letter_keeps_at_most_1000_characters_of_the_error,
            a_poison_delivery_in_a_batch_is_dead_lettered_alone_and_the_rest_acknowledged,
            batches_settled_out_of_order_are_each_acknowledged_once,
            dead_letters_are_peeked_oldest_first_and_left_in_place,
            replayed_dead_letters_are_consumed_again_with_their_retry_count_reset,
            purging_deletes_every_dead_letter_of_the_queue,
            shutting_down_waits_for_the_delivery_in_flight_and_acknowledges_it,
            a_delivery_failing_during_shutdown_is_still_retried,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`contract::cache`](crate::contract::cache) check, each run on a
/// fresh, empty cache made by `$new` (a closure returning a future of an `impl OrderCache + 'static`),
/// e.g. `order_cache_contract!(|| async { InMemoryOrderCache::new() });`.
#[macro_export]
macro_rules! order_cache_contract {
    ($new:expr) => {
        $crate::__contract_tests!(cache, $new;
            a_cached_order_reads_back_equal_and_an_unknown_one_is_a_miss,
            put_if_newer_never_replaces_a_newer_version_with_an_older_or_equal_one,
            putting_a_batch_stores_each_order_unless_a_newer_version_is_cached,
            concurrent_puts_in_random_order_leave_the_newest_version_cached,
            a_read_right_after_each_write_sees_it_even_while_stale_readers_put_older_states,
            invalidate_drops_the_entry_and_the_next_put_repopulates_it,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`contract::rate_limit`](crate::contract::rate_limit) check, each
/// run on a fresh fixture made by `$new` (a closure returning a future of an
/// `impl LimiterFixture + 'static`).
#[macro_export]
macro_rules! rate_limiter_contract {
    ($new:expr) => {
        $crate::__contract_tests!(rate_limit, $new;
            a_burst_is_allowed_then_limited_for_one_requests_refill_and_other_clients_are_unaffected,
            requests_refill_at_the_configured_rate_up_to_the_burst,
            concurrent_checks_allow_exactly_the_burst,
        );
    };
}

/// Expands to one `#[tokio::test]` per [`contract::audit`](crate::contract::audit) check, each run on a
/// fresh fixture made by `$new` (a closure returning a future of an `impl AuditFixture + 'static`).
#[macro_export]
macro_rules! audit_log_contract {
    ($new:expr) => {
        $crate::__contract_tests!(audit, $new;
            every_appended_event_reads_back_once_keyed_by_its_order_in_append_order,
            one_orders_records_read_back_alone_in_append_order,
            concurrent_appends_of_different_orders_keep_each_orders_order,
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

    mod webhooks {
        use crate::memory::InMemorySalesStore;

        crate::webhook_store_contract!(|| async { InMemorySalesStore::new() });
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

    mod bus {
        crate::command_bus_contract!(|| async { crate::contract::bus::InMemoryBusFixture });
    }

    mod cache {
        use crate::memory::InMemoryOrderCache;

        crate::order_cache_contract!(|| async { InMemoryOrderCache::new() });
    }

    mod rate_limit {
        crate::rate_limiter_contract!(|| async { crate::contract::rate_limit::InMemoryLimiterFixture });
    }

    mod audit {
        crate::audit_log_contract!(|| async { crate::contract::audit::InMemoryAuditFixture::default() });
    }
}
