Someone asked to reset the password of your account.

To choose a new password, open this link within 24 hours:

{* reset_link *}

If it was not you, ignore this message: your password stays as it is.
