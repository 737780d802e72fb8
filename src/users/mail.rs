//! The users module's mail (users spec §4): confirmation links and their page's check. Each
//! mail is rendered before anything is written (a missing template changes nothing: 702), then
//! queued in the same transaction as the code it carries.

use serde_json::Value;
use uuid::Uuid;

use super::input::{Email, MailOptions, NewUser, Scope, UserId};
use super::password::Secret;
use super::store::{self, PendingConfirmation, Renewal};
use super::{User, UserError, Users};
use crate::mail::{self, Message, Purpose, TemplateKind, outbox};

/// The page a confirmation link opens.
pub const CONFIRMATION_PAGE: &str = "_confirmation";
/// The page a password-reset link opens.
pub const RESET_PAGE: &str = "_resetpassword";

impl Users {
    /// Refuses (810) a link mail to an address that had its share lately, across scopes.
    async fn room_for_mail_to(
        &self,
        tx: &impl deadpool_postgres::GenericClient,
        to: &str,
    ) -> Result<(), UserError> {
        let caps = self.mailer.destination_caps();
        match outbox::destination_has_room(tx, to, caps).await? {
            true => Ok(()),
            false => Err(UserError::TooManyMails),
        }
    }

    /// A mail from `options`' template with `link` under `link_key`, to `to`.
    async fn render_mail(
        &self,
        kind: TemplateKind,
        options: &MailOptions,
        to: &str,
        link_key: &str,
        link: String,
    ) -> Result<Message, UserError> {
        let template = self
            .mailer
            .templates()
            .mail(kind, options.template.as_deref())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "mail template unusable; nothing sent (702)");
                UserError::MailNotConfigured
            })?;
        let mut values = options.tpl_keys.clone();
        // The link wins over a tpl_key of the same name (users spec §4.2).
        values.insert(link_key.to_owned(), Value::String(link));
        Ok(Message {
            from: options.from_email.clone(),
            to: vec![to.to_owned()],
            subject: options.subject.clone(),
            text: Some(template.text.render(&values)),
            html: template.html.map(|html| html.render(&values)),
            ..Message::default()
        })
    }

    async fn confirmation_mail(
        &self,
        options: &MailOptions,
        to: &str,
        code: &str,
    ) -> Result<Message, UserError> {
        let link = self.mailer.link(CONFIRMATION_PAGE, code);
        self.render_mail(
            TemplateKind::Confirmation,
            options,
            to,
            "confirm_link",
            link,
        )
        .await
    }

    /// `create` with `confirmation`: the user (inactive, pending) and the mail in one
    /// transaction.
    pub(super) async fn create_pending(
        &self,
        scope: &Scope,
        new_user: &NewUser,
        password_hash: Option<&str>,
    ) -> Result<User, UserError> {
        let (Some(options), Some(email)) = (&new_user.confirmation, &new_user.email) else {
            return Err(UserError::Missing("email"));
        };
        let (code, code_hash) = mail::new_code();
        let message = self
            .confirmation_mail(options, email.as_str(), &code)
            .await?;
        let options = options.to_json();
        let pending = PendingConfirmation {
            code_hash: &code_hash,
            options: &options,
        };
        let user = self
            .db
            .transaction(async |tx| {
                self.room_for_mail_to(tx, email.as_str()).await?;
                let user =
                    store::insert(tx, scope.as_str(), new_user, password_hash, Some(pending))
                        .await?;
                outbox::enqueue(tx, Purpose::Confirmation, Some(user.user_id), &message).await?;
                Ok::<_, UserError>(user)
            })
            .await?;
        self.mailer.queued(1);
        Ok(user)
    }

    /// Applies `mail.client_senders` to a client's mail options: its sender kept, replaced by
    /// the server's own, or refused (801) when the operator listed others.
    pub fn check_client_mail(&self, options: Option<&mut MailOptions>) -> Result<(), UserError> {
        let Some(options) = options else {
            return Ok(());
        };
        match self.mailer.client_sender(&options.from_email) {
            Some(sender) => {
                options.from_email = sender;
                Ok(())
            }
            None => Err(UserError::bad(format!(
                "Sender '{}' is not allowed for client requests (see mail.client_senders).",
                options.from_email
            ))),
        }
    }

    /// `resendConfirmation` (users spec §4): a fresh code and mail, with the stored options
    /// unless others are given; the old link stops working. 604 for an unknown user, 614 for
    /// one not waiting for confirmation, 810 within a minute of the last resend.
    pub async fn resend_confirmation(
        &self,
        scope: &Scope,
        user_id: Option<UserId>,
        options: Option<MailOptions>,
    ) -> Result<User, UserError> {
        let user_id = user_id.ok_or(UserError::NotFound)?.uuid();
        self.renew_confirmation(user_id, Some(scope), options, Renewal::Resend)
            .await
    }

    /// `sendConfirmationLink(user_id, options)` (users spec §4): any user, in any scope, gets a
    /// new code and becomes inactive and pending until the link is opened.
    pub async fn send_confirmation_link(
        &self,
        user_id: Option<UserId>,
        options: MailOptions,
    ) -> Result<User, UserError> {
        let user_id = user_id.ok_or(UserError::NotFound)?.uuid();
        self.renew_confirmation(user_id, None, Some(options), Renewal::NewLink)
            .await
    }

    async fn renew_confirmation(
        &self,
        user_id: Uuid,
        scope: Option<&Scope>,
        options: Option<MailOptions>,
        renewal: Renewal,
    ) -> Result<User, UserError> {
        let (code, code_hash) = mail::new_code();
        let user = self
            .db
            .transaction(async |tx| {
                let target = store::confirmation_target(tx, user_id, scope.map(Scope::as_str))
                    .await?
                    .ok_or(UserError::NotFound)?;
                if renewal == Renewal::Resend {
                    if target.user.confirmation.is_none() {
                        return Err(UserError::PendingNotFound);
                    }
                    if target.resent_lately {
                        return Err(UserError::TooManyRequests);
                    }
                }
                let options = match options {
                    Some(options) => options,
                    None => target
                        .options
                        .as_ref()
                        .and_then(|stored| MailOptions::parse(stored, "confirmation").ok())
                        // A user made pending before options were stored: nothing to resend with.
                        .ok_or(UserError::MailNotConfigured)?,
                };
                let email = target
                    .user
                    .email
                    .as_deref()
                    .ok_or(UserError::InvalidEmail)?;
                self.room_for_mail_to(tx, email).await?;
                let message = self.confirmation_mail(&options, email, &code).await?;
                let options = options.to_json();
                let pending = PendingConfirmation {
                    code_hash: &code_hash,
                    options: &options,
                };
                let user = store::renew_confirmation(tx, user_id, pending, renewal).await?;
                outbox::enqueue(tx, Purpose::Confirmation, Some(user_id), &message).await?;
                Ok(user)
            })
            .await?;
        self.mailer.queued(1);
        Ok(user)
    }

    /// The confirmation page's work: the user whose link this is becomes active and confirmed,
    /// and the code stops working. `None` for an unknown (or used) code.
    pub async fn confirm(&self, code: &str) -> Result<Option<User>, UserError> {
        let code_hash = mail::code_hash(code);
        let code_hash = code_hash.as_str();
        self.db
            .write(|client| async move { store::confirm(&*client, code_hash).await })
            .await
    }

    /// `sendPasswordResetLink(to_email, scope, options)` (users spec §4): the user with that
    /// address in `scope` gets a reset link valid for 24 hours (their older ones stop
    /// working); the password and state are untouched until the link is used. 704 when no
    /// user has the address.
    pub async fn send_password_reset_link(
        &self,
        scope: &Scope,
        to: &str,
        options: MailOptions,
    ) -> Result<(), UserError> {
        let to = Email::parse(to)?;
        let (code, code_hash) = mail::new_code();
        let link = self.mailer.link(RESET_PAGE, &code);
        let mut message = self
            .render_mail(
                TemplateKind::PasswordReset,
                &options,
                to.as_str(),
                "reset_link",
                link,
            )
            .await?;
        self.db
            .transaction(async |tx| {
                let (user_id, stored) = store::user_id_by_email(tx, scope.as_str(), to.as_str())
                    .await?
                    .ok_or(UserError::InvalidEmail)?;
                self.room_for_mail_to(tx, &stored).await?;
                // To the address as the user gave it, not as the caller typed it.
                message.to = vec![stored];
                store::replace_password_reset(tx, user_id, scope.as_str(), &code_hash).await?;
                outbox::enqueue(tx, Purpose::PasswordReset, Some(user_id), &message).await?;
                Ok::<_, UserError>(())
            })
            .await?;
        self.mailer.queued(1);
        Ok(())
    }

    /// Whether a reset code is valid now (the form page).
    pub async fn password_reset_valid(&self, code: &str) -> Result<bool, UserError> {
        let code_hash = mail::code_hash(code);
        let code_hash = code_hash.as_str();
        let user = self
            .db
            .read(|client| async move { store::password_reset_user(&*client, code_hash).await })
            .await?;
        Ok(user.is_some())
    }

    /// Sets a new password with a reset code (users spec §4.4): `false` when the code is
    /// unknown, used or expired. The code is checked before the password is hashed, so made-up
    /// codes cost no hashing; it is used up in the same statement that stores the password.
    pub async fn reset_password(
        &self,
        code: &str,
        new_password: &Secret,
    ) -> Result<bool, UserError> {
        if !self.password_reset_valid(code).await? {
            return Ok(false);
        }
        let password_hash = self
            .hasher
            .hash(new_password)
            .await
            .map_err(UserError::Internal)?;
        let code_hash = mail::code_hash(code);
        let (code_hash, password_hash) = (code_hash.as_str(), password_hash.as_str());
        self.db
            .write(|client| async move {
                store::use_password_reset(&*client, code_hash, password_hash).await
            })
            .await
    }

    /// `flushExpiredPasswordResets()`: deletes reset codes older than 24 hours; how many.
    pub async fn flush_expired_password_resets(&self) -> Result<u64, UserError> {
        self.db
            .write(|client| async move { store::flush_expired_password_resets(&*client).await })
            .await
    }
}
