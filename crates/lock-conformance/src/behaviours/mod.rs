//! The behaviours, one public function each; the doc comment is the sentence it checks.

pub mod capability;
pub mod deadlock;
pub mod locker;
pub mod manager;
pub mod observe;
pub mod store;

use std::time::Duration;

use crate::{Backend, Behaviour, Capabilities};

/// How long the suite waits for anything that should happen promptly (a child's report, a
/// released lock). Generous, because CI machines are shared and slow; it bounds a hang, it is
/// not a performance target.
pub const PROMPTLY: Duration = Duration::from_secs(30);

macro_rules! registry {
    ($($module:ident :: $name:ident => $needs:expr,)*) => {
        /// Every behaviour with the capabilities it needs, in a stable order.
        pub fn all<B: Backend>() -> Vec<Behaviour<B>> {
            vec![$(Behaviour {
                name: concat!(stringify!($module), "::", stringify!($name)),
                needs: $needs,
                check: $module::$name::<B>,
            },)*]
        }
    };
}

const NONE: Capabilities = Capabilities::NONE;
const ALLOC: Capabilities = Capabilities::ALLOCATION;
const MP: Capabilities = Capabilities::MULTIPROCESS;
const MP_ALLOC: Capabilities = Capabilities::MULTIPROCESS.union(Capabilities::ALLOCATION);
const PERSIST: Capabilities = Capabilities::PERSISTENT;
const MP_PERSIST: Capabilities = Capabilities::MULTIPROCESS.union(Capabilities::PERSISTENT);
const MP_PERSIST_ALLOC: Capabilities = MP_PERSIST.union(Capabilities::ALLOCATION);
const DEATH: Capabilities = Capabilities::MULTIPROCESS.union(Capabilities::OWNER_DEATH);
const SHARED_OWNER: Capabilities = Capabilities::OWNER_PER_MANAGER;
const DAMAGE: Capabilities = Capabilities::PERSISTENT.union(Capabilities::DAMAGEABLE);
const WAITERS: Capabilities = Capabilities::WAITERS;
const DEADLOCK: Capabilities = Capabilities::DEADLOCK;
const FORK: Capabilities = Capabilities::FORK_REFUSED;

registry! {
    manager::allocates_distinct_ids_until_exhausted => ALLOC,
    manager::freed_id_is_reused_and_never_handed_out_twice => ALLOC,
    manager::allocations_are_seen_by_other_processes => MP_PERSIST_ALLOC,
    manager::allocate_and_retrieve_marks_and_refuses => ALLOC,
    manager::out_of_range_ids_are_refused => NONE,
    manager::out_of_range_ids_are_refused_by_allocation => ALLOC,
    manager::double_free_is_refused => ALLOC,
    manager::free_all_frees_everything_and_keeps_held_locks_held => ALLOC,
    manager::available_is_exact => ALLOC,
    manager::held_is_exact => NONE,
    manager::held_names_holders_in_other_processes => MP,
    manager::concurrent_allocation_from_threads_never_duplicates => ALLOC,
    manager::concurrent_allocation_from_processes_never_duplicates => MP_ALLOC,
    manager::zero_capacity_is_refused => NONE,
    locker::lock_unlock_lifecycle => NONE,
    locker::unlock_of_unlocked_lock_is_refused => NONE,
    locker::unlock_by_another_owner_is_refused => NONE,
    locker::unlock_from_another_thread_of_the_owner_works => SHARED_OWNER,
    locker::relock_by_the_same_owner_is_not_reentrant => NONE,
    locker::excludes_across_threads => NONE,
    locker::excludes_across_processes => MP,
    locker::different_ids_are_independent => NONE,
    locker::try_lock_fails_while_held => NONE,
    locker::try_lock_for_waits_about_the_timeout => NONE,
    locker::try_lock_for_acquires_when_released => NONE,
    locker::try_lock_for_without_a_representable_deadline_waits_like_lock => NONE,
    locker::blocked_lock_proceeds_soon_after_release => NONE,
    locker::blocked_lock_in_another_process_proceeds_after_release => MP,
    locker::guard_drop_releases => NONE,
    locker::free_keeps_the_handle_usable_and_does_not_reallocate => ALLOC,
    locker::free_of_a_held_lock_leaves_it_held => ALLOC,
    locker::sigkilled_holder_is_taken_over_with_owner_died => DEATH,
    locker::sigkilled_holder_is_reported_to_try_lock => DEATH,
    locker::an_inherited_manager_is_refused_in_a_forked_child => FORK,
    store::open_of_missing_store_is_not_found => PERSIST,
    store::create_of_existing_store_already_exists => PERSIST,
    store::store_outlives_its_manager => PERSIST,
    store::reopen_with_another_capacity_is_incompatible => PERSIST,
    store::remove_deletes_and_a_second_remove_is_not_found => PERSIST,
    store::remove_unused_keeps_a_store_in_use => PERSIST,
    store::a_spec_of_another_backend_is_invalid => NONE,
    store::concurrent_open_or_create_all_succeed_one_creates => MP_PERSIST,
    store::damaged_store_is_refused => DAMAGE,
    observe::held_names_pid_host_owner_and_since => NONE,
    observe::a_dead_holders_lock_is_listed_and_flagged_dead => DEATH,
    observe::snapshot_lists_the_holder_and_each_waiter => WAITERS,
    observe::clients_are_the_other_open_managers => NONE,
    deadlock::a_two_cycle_has_exactly_one_victim => DEADLOCK,
    deadlock::a_three_cycle_has_exactly_one_victim => DEADLOCK,
    deadlock::a_long_wait_that_is_no_cycle_is_never_a_deadlock => DEADLOCK,
    deadlock::a_cycle_broken_by_a_timeout_has_no_victim => DEADLOCK,
    deadlock::a_dead_member_of_a_cycle_is_owner_died_not_deadlock => DEADLOCK.union(DEATH),
    capability::fencing_token_strictly_increases => Capabilities::FENCED,
    capability::lease_reports_ttl_and_time_left => Capabilities::LEASED,
    capability::holder_is_visible_to_others => Capabilities::INSPECT,
    capability::lock_data_is_readable_by_others => Capabilities::LOCK_DATA,
}
