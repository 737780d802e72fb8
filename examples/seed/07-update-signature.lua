core.users.update(data_params, listener)
