//! Users: list (admin), read, update and delete (the user themself or an admin; role
//! changes by an admin only). Every change is audited.

use std::sync::Arc;

use actix_web::{HttpResponse, delete, get, put, web};
use serde::Deserialize;
use tally_actors::{AccountStatus, Engine, EngineError, Role, UserChanges, UserRecord};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Auth, AuthUser};
use crate::domain::{validate_email, validate_password, validate_username};
use crate::error::{ApiError, Code, FieldError, Problem};
use crate::extract::{JsonBody, Query, from_str_opt, path_user_id};
use crate::routes::auth::{audit, hash_password, store_error, user_write_error};
use crate::routes::views::{Page, UserView, decode_cursor, encode_cursor, page_size};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserListParams {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Users per page, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "from_str_opt")]
    #[param(value_type = Option<i64>)]
    pub limit: Option<i64>,
}

/// Every user, by id (admin only).
#[utoipa::path(tag = "users", params(UserListParams),
    responses((status = 200, body = Page<UserView>), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[get("/users")]
pub async fn list(
    engine: web::Data<Engine>,
    caller: AuthUser,
    params: Query<UserListParams>,
) -> Result<HttpResponse, ApiError> {
    if !caller.is_admin() {
        return Err(ApiError::forbidden("Only an admin may list users"));
    }
    let after = params
        .0
        .cursor
        .as_deref()
        .map(|cursor| {
            decode_cursor(cursor)?
                .parse::<i64>()
                .map_err(|_| ApiError::invalid_parameter("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    let limit = page_size(params.0.limit)?;
    let mut users = engine.store().users(after, limit + 1).await.map_err(store_error)?;
    let next_cursor = if users.len() as i64 > limit {
        users.truncate(limit as usize);
        users.last().map(|user| encode_cursor(&user.id.to_string()))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page {
        items: users.iter().map(UserView::from).collect(),
        next_cursor,
    }))
}

async fn visible_user(engine: &Engine, caller: &AuthUser, raw: &str) -> Result<UserRecord, ApiError> {
    let id = path_user_id(raw)?;
    if !caller.may_act_for(id) {
        return Err(ApiError::forbidden("You may only see and change your own user"));
    }
    engine
        .store()
        .user(id.get())
        .await
        .map_err(store_error)?
        .filter(|user| user.deleted_at.is_none())
        .ok_or_else(|| ApiError::new(Code::UserNotFound, format!("No user {id}")))
}

/// A user (the user themself, or an admin).
#[utoipa::path(tag = "users", params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[get("/users/{id}")]
pub async fn get_one(
    engine: web::Data<Engine>,
    caller: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = visible_user(&engine, &caller, &path).await?;
    Ok(HttpResponse::Ok().json(UserView::from(&user)))
}

/// Fields to change; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserBody {
    pub username: Option<String>,
    pub email: Option<String>,
    #[schema(format = Password)]
    pub password: Option<String>,
    /// `user` or `admin`; admins only.
    pub role: Option<String>,
}

/// Change a user (the user themself, or an admin; the role: admins only). A new
/// password or role ends the user's other sessions.
#[utoipa::path(tag = "users", params(("id" = i64, Path)), request_body = UpdateUserBody,
    responses((status = 200, body = UserView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[put("/users/{id}")]
pub async fn update(
    engine: web::Data<Engine>,
    auth: web::Data<Arc<Auth>>,
    caller: AuthUser,
    path: web::Path<String>,
    body: JsonBody<UpdateUserBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    let mut errors = Vec::new();
    let mut check = |field: &str, outcome: Result<String, String>| -> Option<String> {
        outcome
            .map_err(|message| errors.push(FieldError::new(field, message)))
            .ok()
    };
    let username = body
        .username
        .as_deref()
        .and_then(|value| check("username", validate_username(value)));
    let email = body
        .email
        .as_deref()
        .and_then(|value| check("email", validate_email(value)));
    let password = body
        .password
        .as_deref()
        .and_then(|value| check("password", validate_password(value).map(|()| value.to_string())));
    let role = body.role.as_deref().and_then(|value| {
        check(
            "role",
            Role::parse(value)
                .map(|role| role.as_str().to_string())
                .ok_or_else(|| "must be user or admin".into()),
        )
    });
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if username.is_none() && email.is_none() && password.is_none() && role.is_none() {
        return Err(ApiError::validation(vec![FieldError::new(
            "body",
            "names no field to change",
        )]));
    }
    let target = visible_user(&engine, &caller, &path).await?;
    let role = role.and_then(|role| Role::parse(&role));
    if role.is_some_and(|role| role != target.role) && !caller.is_admin() {
        return Err(ApiError::forbidden("Only an admin may change a role"));
    }
    let password_hash = match password {
        Some(password) => Some(hash_password(&auth, password).await?),
        None => None,
    };
    let actor = Some(caller.id.get());
    let mut entries = Vec::new();
    let changed: Vec<&str> = [
        ("username", username.is_some()),
        ("email", email.is_some()),
        ("password", password_hash.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    if !changed.is_empty() {
        entries.push(audit(
            target.id.to_string(),
            "updated",
            actor,
            serde_json::json!({ "fields": changed }),
        ));
    }
    let role_changes = role.filter(|role| *role != target.role);
    if let Some(role) = role_changes {
        entries.push(audit(
            target.id.to_string(),
            "role_changed",
            actor,
            serde_json::json!({ "from": target.role.as_str(), "to": role.as_str() }),
        ));
    }
    let ends_sessions = password_hash.is_some() || role_changes.is_some();
    let changes = UserChanges {
        username,
        email,
        password_hash,
        role: role_changes,
        bump_token_version: ends_sessions,
    };
    let updated = engine
        .store()
        .update_user(target.id, &changes, &entries)
        .await
        .map_err(user_write_error)?;
    if ends_sessions {
        auth.announce_user_change(updated.id).await;
    }
    Ok(HttpResponse::Ok().json(UserView::from(&updated)))
}

/// Delete a user (the user themself, or an admin). The account must be empty: it is
/// closed, and the user's tokens stop working.
#[utoipa::path(tag = "users", params(("id" = i64, Path)),
    responses((status = 204, description = "Deleted"), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, description = "The account still holds money", body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[delete("/users/{id}")]
pub async fn remove(
    engine: web::Data<Engine>,
    auth: web::Data<Arc<Auth>>,
    caller: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let target = visible_user(&engine, &caller, &path).await?;
    let account = path_user_id(&path)?;
    let context = caller.audit_context();
    match engine.set_status(account, AccountStatus::Closed, context).await {
        Ok(_) => {}
        // Closed by an earlier attempt that did not get to delete the user.
        Err(EngineError::StatusChange(tally_actors::StatusChangeRefusal::AccountClosed)) => {}
        Err(error) => return Err(error.into()),
    }
    let entry = audit(
        target.id.to_string(),
        "deleted",
        Some(caller.id.get()),
        serde_json::json!({}),
    );
    let deleted = engine
        .store()
        .delete_user(target.id, &entry)
        .await
        .map_err(user_write_error)?;
    auth.announce_user_change(deleted.id).await;
    Ok(HttpResponse::NoContent().finish())
}
