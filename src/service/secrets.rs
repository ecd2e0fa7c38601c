//! Random keys shared by every replica through the database.

use sea_orm::{ActiveValue::Set, DatabaseConnection, DbErr, EntityTrait};

use super::{now, random_bytes};
use crate::{db, entity::server_secret};

/// The 32-byte key called `name`, created at random by whichever replica asks
/// first; every later caller, on any replica, gets the same key.
pub async fn shared_key(db: &DatabaseConnection, name: &str) -> Result<[u8; 32], DbErr> {
    if let Some(key) = load(db, name).await? {
        return Ok(key);
    }
    let candidate = server_secret::ActiveModel {
        name: Set(name.to_owned()),
        value: Set(random_bytes::<32>().to_vec()),
        create_time: Set(now()),
    };
    // If another replica won the race, its key stays and ours is discarded.
    let txn = db::begin_write(db).await?;
    server_secret::Entity::insert(candidate)
        .on_conflict_do_nothing()
        .exec_without_returning(&*txn)
        .await?;
    txn.commit().await?;
    load(db, name)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("server secret {name}")))
}

async fn load(db: &DatabaseConnection, name: &str) -> Result<Option<[u8; 32]>, DbErr> {
    let Some(row) = server_secret::Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    row.value
        .try_into()
        .map(Some)
        .map_err(|_| DbErr::Custom(format!("server secret {name} is not 32 bytes")))
}
