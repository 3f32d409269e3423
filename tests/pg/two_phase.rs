//! Two-phase commit through tandem: a transaction prepared on the authoritative side is
//! prepared alike on the other side, and `COMMIT PREPARED` / `ROLLBACK PREPARED` end it there as
//! they ended it here (the rolled-back one's sequence use included). The sides live on two
//! servers that allow prepared transactions (`scripts/ensure-logical-pg`): a prepared
//! transaction's name is unique per server.

use super::exact::{assert_carried_over, identical_sides_on_two_servers, psql_script, succeeded};
use super::Proxy;

const TWO_PHASE: &str = "
BEGIN;
INSERT INTO items (name) VALUES ('two-phase');
PREPARE TRANSACTION 'tandem_two_phase_commit';
BEGIN;
INSERT INTO items (name) VALUES ('abandoned');
PREPARE TRANSACTION 'tandem_two_phase_rollback';
COMMIT PREPARED 'tandem_two_phase_commit';
ROLLBACK PREPARED 'tandem_two_phase_rollback';
INSERT INTO items (name) VALUES ('after');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_end_on_the_other_side_as_they_ended_here() {
    let (old, new) = identical_sides_on_two_servers().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    succeeded(
        &psql_script(&proxy.port, TWO_PHASE, true).await,
        "the two-phase script",
    );
    // 'abandoned' took id 3 on old and rolled back: new must skip it too, so 'after' is 4 there.
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[(
            "public.items",
            &["1|existing||", "2|two-phase||", "4|after||"],
        )],
    )
    .await;
}
