Welcome!

Please confirm your email address by opening this link:

{* confirm_link *}

If you did not sign up, you can ignore this message.
