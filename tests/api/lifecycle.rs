use connections::proto::{
    ConnectionEventType as Event, ConnectionRole, ConnectionState as State,
    DeactivateConnectionRequest, ListConnectionEventsRequest,
};

use crate::support::spawn_app;

#[tokio::test]
async fn full_lifecycle_create_activate_deactivate_reactivate_activate() {
    let app = spawn_app().await;
    let source = app.new_org("Source Bank").await;
    let destination = app.new_org("Destination Lender").await;
    let mut as_source = app.connections(&source);

    let created = app.connect(&source, &destination).await;
    assert_eq!(created.state(), State::Pending);
    assert_eq!(created.source_organization_id, source.id);
    assert_eq!(created.destination_organization_id, destination.id);
    assert!(created.activate_time.is_none());
    assert!(created.deactivate_time.is_none());
    assert_eq!(created.create_time, created.update_time);
    let id = created.id.clone();

    let activated = app
        .activate(&destination, &id, &created.etag)
        .await
        .unwrap();
    assert_eq!(activated.state(), State::Active);
    assert!(activated.activate_time.is_some());
    assert_ne!(activated.etag, created.etag);

    let deactivated = as_source
        .deactivate_connection(DeactivateConnectionRequest {
            connection_id: id.clone(),
            reason: "contract ended".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(deactivated.state(), State::Inactive);
    assert_eq!(deactivated.deactivated_by(), ConnectionRole::Source);
    assert_eq!(deactivated.deactivation_reason, "contract ended");
    assert!(deactivated.deactivate_time.is_some());

    let reactivated = app
        .reactivate(&source, &id, &deactivated.etag)
        .await
        .unwrap();
    assert_eq!(reactivated.state(), State::Pending);
    // The last deactivation stays on record.
    assert_eq!(reactivated.deactivated_by(), ConnectionRole::Source);

    let active_again = app.activate(&destination, &id, "").await.unwrap();
    assert_eq!(active_again.state(), State::Active);

    // Both parties read the same connection as the last response.
    for org in [&source, &destination] {
        assert_eq!(app.get(org, &id).await, active_again);
    }

    let events = as_source
        .list_connection_events(ListConnectionEventsRequest {
            connection_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(events.next_page_token.is_empty());
    let steps: Vec<_> = events
        .events
        .iter()
        .map(|e| {
            (
                e.sequence,
                e.r#type(),
                e.from_state(),
                e.to_state(),
                e.actor_role(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            (
                1,
                Event::Created,
                State::Unspecified,
                State::Pending,
                ConnectionRole::Source
            ),
            (
                2,
                Event::Activated,
                State::Pending,
                State::Active,
                ConnectionRole::Destination
            ),
            (
                3,
                Event::Deactivated,
                State::Active,
                State::Inactive,
                ConnectionRole::Source
            ),
            (
                4,
                Event::Reactivated,
                State::Inactive,
                State::Pending,
                ConnectionRole::Source
            ),
            (
                5,
                Event::Activated,
                State::Pending,
                State::Active,
                ConnectionRole::Destination
            ),
        ]
    );
    assert_eq!(events.events[2].reason, "contract ended");
    assert_eq!(events.events[1].actor_organization_id, destination.id);
    assert!(events.events.iter().all(|e| e.connection_id == id));
    // The history replayed ends in the current state.
    assert_eq!(
        events.events.last().unwrap().to_state(),
        active_again.state()
    );
    app.stop().await;
}
