core.users.login(data_params, listener)
