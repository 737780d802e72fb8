<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Choose a new password</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; background: #f4f5f7; color: #1f2328; margin: 0; }
  main { max-width: 28rem; margin: 12vh auto; background: #fff; padding: 2rem; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
  h1 { font-size: 1.4rem; margin-top: 0; }
  label { display: block; font-weight: 600; margin: 1rem 0 .3rem; }
  input[type=password] { width: 100%; box-sizing: border-box; padding: .6rem; font-size: 1rem; border: 1px solid #8c959f; border-radius: 4px; }
  input[type=password]:focus { outline: 3px solid #0b5cad55; border-color: #0b5cad; }
  button { margin-top: 1.5rem; padding: .7rem 1.4rem; font-size: 1rem; background: #0b5cad; color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
  button:focus { outline: 3px solid #0b5cad88; outline-offset: 2px; }
  .error { color: #a40e26; background: #ffebe9; padding: .6rem; border-radius: 4px; }
  .error:empty { display: none; }
</style>
</head>
<body>
<main>
  <h1>Choose a new password</h1>
  <p class="error" role="alert">{{ error }}</p>
  <form method="post" action="{{ action }}">
    <input type="hidden" name="code" value="{{ code }}">
    <label for="password">New password</label>
    <input type="password" id="password" name="password" autocomplete="new-password" required autofocus>
    <label for="password_repeat">Repeat the new password</label>
    <input type="password" id="password_repeat" name="password_repeat" autocomplete="new-password" required>
    <button type="submit">Set password</button>
  </form>
</main>
</body>
</html>
