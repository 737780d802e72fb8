<!doctype html>
<html lang="en">
<body style="font-family: system-ui, sans-serif; color: #1f2328; line-height: 1.5;">
  <h1 style="font-size: 1.4em;">Reset your password</h1>
  <p>Someone asked to reset the password of your account. To choose a new one, open this link within 24 hours:</p>
  <p><a href="{* reset_link *}" style="display: inline-block; padding: .6em 1.2em; background: #0b5cad; color: #fff; text-decoration: none; border-radius: 4px;">Choose a new password</a></p>
  <p style="font-size: .9em; color: #57606a;">Or open this link: {* reset_link *}</p>
  <p style="font-size: .9em; color: #57606a;">If it was not you, ignore this message: your password stays as it is.</p>
</body>
</html>
