//! Which API key made each change: every event names the acting key, by its
//! ID and by its display name as it was when it acted (a copy kept with the
//! event), never by its secret. Events recorded before keys were recorded
//! name none.

use std::time::Duration;

use connections::{
    config::DatabaseSettings,
    db,
    domain::{
        Action, ApiKeyId, Caller, Change, ConnectionId, ConnectionRecord, DataType, DataTypes,
        NewEvent, Organization, OrganizationId,
    },
    entity::{api_key, connection, connection_event, organization},
    proto::{
        ConnectionEvent, ConnectionEventType, DeactivateConnectionRequest,
        ListConnectionEventsRequest, ListConnectionEventsResponse, RevokeApiKeyRequest,
        WatchConnectionEventsResponse,
    },
};
use migration::{Migrator, MigratorTrait};
use prost::Message;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Statement,
    sea_query::Expr,
};

use crate::support::{
    AppOptions, FIRST_KEY_NAME, TestApp, TestDatabase, TestOrg,
    clients::new_key_on,
    rpcs, spawn_app, spawn_app_on,
    watching::{from_beginning, until_quiet, watch},
};

/// How long a watch must stay silent to have sent everything it holds.
const QUIET: Duration = Duration::from_millis(500);

/// The events of connection `id` that a watch of `org`'s events from the
/// first sends.
async fn watched(app: &TestApp, org: &TestOrg, id: &str) -> Vec<ConnectionEvent> {
    let mut stream = watch(app, org, from_beginning()).await;
    let (events, _) = until_quiet(&mut stream, QUIET).await;
    events
        .into_iter()
        .filter(|event| event.connection_id == id)
        .collect()
}

/// A new organization `name` (as it calls with its first key, named
/// [`FIRST_KEY_NAME`]), and the organization as it calls with each of the
/// further keys named `keys`.
async fn with_keys<const N: usize>(
    app: &TestApp,
    name: &str,
    keys: [&str; N],
) -> (TestOrg, [TestOrg; N]) {
    let org = app.new_org(name).await;
    let mut further = Vec::with_capacity(N);
    for key in keys {
        further.push(app.new_key(&org, key).await);
    }
    let further = <[TestOrg; N]>::try_from(further).expect("one per name");
    (org, further)
}

/// What an event says of who acted: its type, the organization, and the
/// key's ID and display name.
fn acts(events: &[ConnectionEvent]) -> Vec<(ConnectionEventType, String, String, String)> {
    events
        .iter()
        .map(|event| {
            (
                event.r#type(),
                event.actor_organization_id.clone(),
                event.actor_api_key_id.clone(),
                event.actor_api_key_display_name.clone(),
            )
        })
        .collect()
}

/// Two keys of each organization take turns: every event names the key of
/// the call that made it, in ListConnectionEvents and WatchConnectionEvents
/// alike, for both parties.
#[tokio::test]
async fn each_event_names_the_key_that_made_it_in_list_and_watch_alike() {
    use ConnectionEventType::{Activated, Created, Deactivated, Reactivated};
    let app = spawn_app().await;
    let (source, [deployer, console]) = with_keys(&app, "Source", ["ci-deployer", "console"]).await;
    let (destination, [approver, offboarding]) =
        with_keys(&app, "Destination", ["approver", "offboarding"]).await;

    let id = app.connect(&deployer, &destination).await.id;
    app.activate(&approver, &id, "").await.unwrap();
    app.deactivate(&offboarding, &id, "").await.unwrap();
    app.reactivate(&console, &id, "").await.unwrap();
    app.activate(&approver, &id, "").await.unwrap();
    app.deactivate(&deployer, &id, "").await.unwrap();

    let expected: Vec<_> = [
        (Created, &deployer, "ci-deployer"),
        (Activated, &approver, "approver"),
        (Deactivated, &offboarding, "offboarding"),
        (Reactivated, &console, "console"),
        (Activated, &approver, "approver"),
        (Deactivated, &deployer, "ci-deployer"),
    ]
    .into_iter()
    .map(|(event_type, key, name)| {
        (
            event_type,
            key.id.clone(),
            key.key_id.clone(),
            name.to_owned(),
        )
    })
    .collect();
    for reader in [&source, &destination] {
        let listed = app.events(reader, &id).await;
        assert_eq!(acts(&listed), expected);
        assert_eq!(
            watched(&app, reader, &id).await,
            listed,
            "a watch sends the events ListConnectionEvents lists, field for field"
        );
    }
}

/// A retry with the same request_id, from another key of the organization,
/// changes nothing: the one event names the key of the call that executed.
#[tokio::test]
async fn a_replayed_call_leaves_the_event_naming_the_key_that_executed() {
    let app = spawn_app().await;
    let (source, [first, second]) = with_keys(&app, "Source", ["first", "second"]).await;
    let (destination, []) = with_keys(&app, "Destination", []).await;
    let id = app.connect(&source, &destination).await.id;
    let request = DeactivateConnectionRequest {
        connection_id: id.clone(),
        request_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    for key in [&first, &second] {
        app.connections(key)
            .deactivate_connection(request.clone())
            .await
            .unwrap();
    }
    let events = app.events(&destination, &id).await;
    assert_eq!(events.len(), 2, "the retry wrote no event");
    assert_eq!(
        (
            events[1].actor_api_key_id.as_str(),
            events[1].actor_api_key_display_name.as_str()
        ),
        (first.key_id.as_str(), "first")
    );
}

/// The key's name is the copy the event keeps, not the key's name now: the
/// event's row holds it, and the history still names the key so after the
/// key is renamed (which only an operator with the database can do) and
/// revoked.
#[tokio::test]
async fn an_event_keeps_the_key_name_it_was_made_with() {
    let app = spawn_app().await;
    let (source, [deployer]) = with_keys(&app, "Source", ["ci-deployer"]).await;
    let (destination, []) = with_keys(&app, "Destination", []).await;
    let id = app.connect(&deployer, &destination).await.id;

    let rows = connection_event::Entity::find()
        .filter(connection_event::Column::ConnectionId.eq(uuid::Uuid::parse_str(&id).unwrap()))
        .all(&app.server_db)
        .await
        .unwrap();
    let [row] = rows.as_slice() else {
        panic!("one event: {rows:?}")
    };
    assert_eq!(
        (
            row.actor_api_key_id.map(|key| key.to_string()),
            row.actor_api_key_display_name.as_deref()
        ),
        (Some(deployer.key_id.clone()), Some("ci-deployer"))
    );

    let key = uuid::Uuid::parse_str(&deployer.key_id).unwrap();
    let renamed = api_key::Entity::update_many()
        .col_expr(api_key::Column::DisplayName, Expr::value("renamed"))
        .filter(api_key::Column::Id.eq(key))
        .exec(&app.server_db)
        .await
        .unwrap();
    assert_eq!(renamed.rows_affected, 1);
    app.admin()
        .revoke_api_key(RevokeApiKeyRequest {
            api_key_id: deployer.key_id.clone(),
        })
        .await
        .unwrap();

    for reader in [&source, &destination] {
        let listed = app.events(reader, &id).await;
        assert_eq!(
            (
                listed[0].actor_api_key_id.as_str(),
                listed[0].actor_api_key_display_name.as_str()
            ),
            (deployer.key_id.as_str(), "ci-deployer")
        );
        assert_eq!(watched(&app, reader, &id).await, listed);
    }
}

/// The bytes of ListConnectionEvents and WatchConnectionEvents responses
/// name the keys that acted, and hold none of their secrets.
#[tokio::test]
async fn no_event_carries_a_keys_secret() {
    let app = spawn_app().await;
    let (source, []) = with_keys(&app, "Source", []).await;
    let (destination, []) = with_keys(&app, "Destination", []).await;
    let id = app.connect(&source, &destination).await.id;
    app.activate(&destination, &id, "").await.unwrap();
    app.deactivate(&source, &id, "").await.unwrap();
    app.reactivate(&source, &id, "").await.unwrap();

    let rpcs = rpcs::all();
    let rpc = |method: &str| {
        rpcs.iter()
            .find(|rpc| rpc.method == method)
            .unwrap_or_else(|| panic!("no RPC {method}"))
    };
    let list = rpcs::Encoded::of(&ListConnectionEventsRequest {
        connection_id: id.clone(),
        page_size: 500,
        page_token: String::new(),
    });
    for reader in [&source, &destination] {
        let listed = rpcs::call(
            &app.channel,
            rpc("ListConnectionEvents"),
            &reader.key,
            list.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            ListConnectionEventsResponse::decode(listed.as_slice())
                .unwrap()
                .events
                .len(),
            4
        );
        let mut stream = rpcs::call_streaming(
            &app.channel,
            rpc("WatchConnectionEvents"),
            &reader.key,
            rpcs::Encoded::of(&from_beginning()),
        )
        .await
        .unwrap();
        let mut streamed = Vec::new();
        while let Ok(message) = tokio::time::timeout(QUIET, stream.message()).await {
            let message = message.unwrap().expect("the stream goes on");
            WatchConnectionEventsResponse::decode(message.as_slice()).unwrap();
            streamed.extend(message);
        }

        for (what, bytes) in [
            ("ListConnectionEvents", &listed),
            ("WatchConnectionEvents", &streamed),
        ] {
            for key in [&source, &destination] {
                // The keys are there: the search below looks where they are.
                assert!(
                    contains(bytes, &key.key_id),
                    "{what} names key {}",
                    key.key_id
                );
                assert!(contains(bytes, FIRST_KEY_NAME), "{what} names the key");
                let body = key.key.strip_prefix("cnx_").expect("a key's secret");
                assert!(
                    !contains(bytes, &key.key) && !contains(bytes, body),
                    "{what} holds a key's secret"
                );
            }
        }
    }
}

/// Whether `needle` appears in `haystack`.
fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Inserts an event as the release before keys were recorded did, in the
/// write transaction `txn`: at the position of that transaction, with an
/// insert that names neither of the key's columns.
async fn append_as_previous_release(txn: &impl ConnectionTrait, event: &NewEvent) {
    let backend = txn.get_database_backend();
    let position = match backend {
        sea_orm::DbBackend::Postgres => {
            "pg_current_xact_id()::text::bigint + \
             (SELECT xid_offset FROM change_log_epochs ORDER BY epoch DESC LIMIT 1)"
        }
        _ => "(SELECT COALESCE(MAX(position), -1) + 1 FROM connection_events)",
    };
    let position: i64 = txn
        .query_one_raw(Statement::from_string(
            backend,
            format!("SELECT {position} AS position"),
        ))
        .await
        .unwrap()
        .expect("a row")
        .try_get("", "position")
        .unwrap();
    let row = connection_event::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        connection_id: Set(event.connection_id.uuid()),
        sequence: Set(event.sequence),
        event_type: Set(event.event_type.to_string()),
        from_state: Set(event.from_state.map(|state| state.to_string())),
        to_state: Set(event.to_state.to_string()),
        actor_organization_id: Set(event.actor.organization().unwrap().uuid()),
        actor_role: Set(event.actor.role().unwrap().to_string()),
        actor_api_key_id: NotSet,
        actor_api_key_display_name: NotSet,
        reason: Set(event.reason.clone()),
        create_time: Set(event.create_time),
        position: Set(position),
        message: NotSet,
        types_before: NotSet,
        pending_types_before: NotSet,
        types_after: NotSet,
        pending_types_after: NotSet,
        by_policy: NotSet,
    };
    connection_event::Entity::insert(row)
        .exec_without_returning(txn)
        .await
        .unwrap();
}

/// A caller of `organization` with a key the database does not hold: the
/// records the previous release wrote never name one.
/// Inserts `record` as a release before invitations did: without the
/// columns later migrations add.
async fn insert_as_previous_release(txn: &impl ConnectionTrait, record: &ConnectionRecord) {
    let row = connection::ActiveModel {
        id: Set(record.id.uuid()),
        source_organization_id: Set(record.parties.source.uuid()),
        destination_organization_id: Set(record.parties.destination.uuid()),
        state: Set(record.state.to_string()),
        data_types: Set(record.data_types.to_storage()),
        version: Set(record.version),
        create_time: Set(record.create_time),
        update_time: Set(record.update_time),
        activate_time: Set(record.activate_time),
        deactivate_time: Set(record.deactivate_time),
        deactivated_by: Set(None),
        deactivation_reason: Set(None),
        invitation_message: NotSet,
        expire_time: NotSet,
        expire_version: NotSet,
        pending_data_types: NotSet,
        pending_data_types_version: NotSet,
    };
    connection::Entity::insert(row)
        .exec_without_returning(txn)
        .await
        .unwrap();
}

fn previous_release(organization: OrganizationId) -> Caller {
    Caller {
        organization,
        api_key: ApiKeyId::generate(),
        api_key_name: "unrecorded".into(),
    }
}

/// Events written before the migration that records keys, and events the
/// previous release writes after it (during a rolling upgrade, its inserts
/// name no key), read back with the key fields empty; events this release
/// writes name their key.
#[tokio::test]
async fn events_recorded_without_a_key_read_back_with_the_key_fields_empty() {
    let (database, url) = TestDatabase::create(false).await;
    let db = db::connect(&DatabaseSettings::new(url.clone()))
        .await
        .unwrap();
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .collect();
    let earlier = names
        .iter()
        .take_while(|name| !name.ends_with("_event_actor_api_key"))
        .count();
    assert!(earlier < names.len(), "the migration that records keys");
    Migrator::up(&db, Some(earlier.try_into().unwrap()))
        .await
        .unwrap();

    // The previous release's schema: a connection and its creation event.
    let now = chrono::Utc::now();
    let [source, destination] = ["Source", "Destination"].map(|name| Organization {
        id: OrganizationId::generate(),
        display_name: name.to_owned(),
        create_time: now,
    });
    for org in [&source, &destination] {
        organization::insert(&db, org).await.unwrap();
    }
    let id = ConnectionId::generate();
    let (pending, created) = ConnectionRecord::create(
        id,
        &previous_release(source.id),
        destination.id,
        DataTypes::new([DataType::Account]).unwrap(),
        now,
        connections::domain::Invitation::default(),
    );
    let txn = db::begin_write(&db).await.unwrap();
    insert_as_previous_release(&*txn, &pending).await;
    append_as_previous_release(&*txn, &created).await;
    txn.commit().await.unwrap();

    db::migrate(&db).await.unwrap();

    // During the rolling upgrade, the previous release activates it.
    let change = |record: &ConnectionRecord, action, caller| {
        record
            .apply(Change {
                action,
                caller,
                etag: None,
                reason: None,
                message: None,
                data_types: None,
                pending_lifetime: None,
                at: chrono::Utc::now(),
            })
            .unwrap()
    };
    let (active, activated) = change(&pending, Action::Activate, previous_release(destination.id));
    let txn = db::begin_write(&db).await.unwrap();
    assert!(
        connection::update_guarded(&*txn, pending.version, &active)
            .await
            .unwrap()
    );
    append_as_previous_release(&*txn, &activated).await;
    txn.commit().await.unwrap();
    db.close().await.unwrap();

    // This release serves the same database; the source deactivates.
    let app = spawn_app_on(database, url, AppOptions::default()).await;
    let source = new_key_on(&app.channel, &source.id.to_string(), "after the upgrade").await;
    let destination = new_key_on(&app.channel, &destination.id.to_string(), "reader").await;
    let id = id.to_string();
    app.deactivate(&source, &id, "").await.unwrap();

    for reader in [&source, &destination] {
        let listed = app.events(reader, &id).await;
        assert_eq!(
            acts(&listed),
            [
                (
                    ConnectionEventType::Created,
                    source.id.clone(),
                    String::new(),
                    String::new()
                ),
                (
                    ConnectionEventType::Activated,
                    destination.id.clone(),
                    String::new(),
                    String::new()
                ),
                (
                    ConnectionEventType::Deactivated,
                    source.id.clone(),
                    source.key_id.clone(),
                    "after the upgrade".to_owned()
                ),
            ]
        );
        assert_eq!(watched(&app, reader, &id).await, listed);
    }
}
