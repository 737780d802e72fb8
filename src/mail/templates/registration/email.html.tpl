<!doctype html>
<html lang="en">
<body style="font-family: system-ui, sans-serif; color: #1f2328; line-height: 1.5;">
  <h1 style="font-size: 1.4em;">Welcome!</h1>
  <p>Please confirm your email address:</p>
  <p><a href="{* confirm_link *}" style="display: inline-block; padding: .6em 1.2em; background: #0b5cad; color: #fff; text-decoration: none; border-radius: 4px;">Confirm my address</a></p>
  <p style="font-size: .9em; color: #57606a;">Or open this link: {* confirm_link *}</p>
  <p style="font-size: .9em; color: #57606a;">If you did not sign up, you can ignore this message.</p>
</body>
</html>
