core.users.get(data_params, listener)
