core.users.delete(data_params, listener)
