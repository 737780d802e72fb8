core.users.create(data_params, listener)
